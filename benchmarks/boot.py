#!/usr/bin/env python3
"""Boot benchmark: vnix's native VMM against QEMU microvm (-enable-kvm) on the same test-kit guest.

Runs interleaved (vnix, QEMU, vnix, QEMU, ...; the order flips every round so that neither always
runs second), ``--runs`` of each (default 7), and reports medians:

* ``vnix_first_instr_ms``: process spawn -> the boot vCPU's first KVM_RUN (the VMM's own
  ``--stats-json`` mark on CLOCK_MONOTONIC, against the spawn time on the same clock; QEMU has
  no such hook, so there is no QEMU figure for it). The VMM is started with the command every
  launcher uses (``vnix.vmm.launch.vmm_argv``);
* ``vnix_ready_ms`` / ``qemu_ready_ms``: process spawn -> the guest's ``ready:`` line on the serial
  port (the ``boot`` guest);
* ``vnix_exit_us`` / ``qemu_exit_us``: one port-I/O exit round trip (guest ``out`` to an unassigned
  port -> the VMM -> resume), timed inside the ``exits`` guest with rdtsc over N exits and converted
  with the host's TSC frequency;
* ``vnix_overhead_mib`` / ``qemu_overhead_mib``: the VMM process's RSS minus the resident part of the
  guest-RAM mapping, sampled from /proc/PID/smaps while the ``serial`` guest waits for input.

Same devices on both sides: QEMU runs ``-M microvm -nodefaults`` with isa-debug-exit and the
serial port only, so vnix runs with ``--rng off --balloon off`` (``NO_VIRTIO``): no virtio device,
no PCI bus (the VMM then does not import its PCI/virtio code). A real VM's virtio-rng and
virtio-balloon (on by default) cost the VMM ~10 ms of start-up more.

This is a benchmark, not a test: these shared machines are noisy, so it prints ratios measured in
one run. ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import signal
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vnix.testkit import build, guest_path, qemu_argv, vnix_argv
from vnix.testkit.report import GuestReport, parse_output
from vnix.testkit.runner import DEBUG_EXIT_OK

#: the device set of QEMU -M microvm -nodefaults: no virtio-rng, no virtio-balloon (so no PCI)
NO_VIRTIO = ["--rng", "off", "--balloon", "off"]


def argv_for(vmm: str, elf: str | Path, *, memory_mib: int, cmdline: str = "") -> list[str]:
    if vmm == "qemu":
        return qemu_argv(elf, memory_mib=memory_mib, cmdline=cmdline)
    return vnix_argv(elf, memory_mib=memory_mib, cmdline=cmdline) + NO_VIRTIO


def run_guest(name: str, vmm: str, *, memory_mib: int, cmdline: str = "",
              timeout: float = 60) -> tuple[GuestReport, float | None, int | None]:
    """Boot test-kit guest ``name``; its report, spawn -> ``ready:`` line (s), exit status."""
    argv = argv_for(vmm, guest_path(name), memory_mib=memory_mib, cmdline=cmdline)
    out = bytearray()
    ready: float | None = None
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            if ready is None and b"\nready: " in out:
                ready = time.monotonic() - start
        status: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = None
    finally:
        proc.stdout.close()
    return parse_output(out.decode("utf-8", "replace")), ready, status


def host_tsc_khz() -> float:
    """The TSC frequency guests see (no TSC scaling here): KVM's answer, else /proc/cpuinfo."""
    try:
        from vnix.kvm import Kvm

        with Kvm() as kvm:
            khz = kvm.tsc_khz()
            if khz:
                return float(khz)
    except Exception:  # noqa: BLE001 - fall back to the kernel's calibration below
        pass
    with open("/proc/cpuinfo") as f:
        m = re.search(r"cpu MHz\s*:\s*([\d.]+)", f.read())
    if not m:
        raise SystemExit("cannot find the TSC frequency")
    return float(m.group(1)) * 1000


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def first_instruction_ms(memory_mib: int) -> float:
    """Spawn -> first KVM_RUN of the boot vCPU, from the VMM's own marks."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = os.path.join(tmp, "stats.json")
        argv = argv_for("vnix", guest_path("boot"), memory_mib=memory_mib) + ["--stats-json", stats]
        spawn = time.monotonic()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)
        with open(stats) as f:
            d = json.load(f)
    # The VMM's marks are CLOCK_MONOTONIC ms after its own t0 (system-wide clock, same as ours):
    # no wall-clock arithmetic, so an NTP step during a run cannot skew the figure.
    return (d["t0_monotonic"] + d["timings_ms"]["first_kvm_run"] / 1000 - spawn) * 1000


def _passed(report: GuestReport, status: int | None) -> bool:
    """As ``GuestRun.passed``: debug-exit 0, a complete report, every self-check ok."""
    return status == DEBUG_EXIT_OK and report.complete and bool(report.checks) and all(report.checks.values())


def ready_ms(vmm: str, memory_mib: int) -> float:
    report, ready, status = run_guest("boot", vmm, memory_mib=memory_mib)
    if not _passed(report, status) or ready is None:
        raise SystemExit(f"boot guest failed under {vmm} (status {status}): {report.failures}")
    return ready * 1000


def exit_us(vmm: str, n: int, tsc_khz: float) -> float:
    report, _, status = run_guest("exits", vmm, cmdline=f"bench={n}", memory_mib=64)
    if not _passed(report, status) or "bench_out_cycles" not in report.extras:
        raise SystemExit(f"exits guest failed under {vmm} (status {status}): {report.failures}")
    return int(report.extras["bench_out_cycles"]) / tsc_khz * 1000


def _smaps_overhead(pid: int, guest_bytes: int) -> float:
    """RSS minus the resident part of the guest-RAM mapping (the anonymous mapping nearest its size)."""
    total_rss = 0
    best: tuple[int, int] | None = None  # (size distance, rss)
    size = rss = 0
    anon = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                size = hi - lo
                anon = len(line.split()) < 6
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
                total_rss += rss
                if anon and size >= guest_bytes:
                    cand = (size - guest_bytes, rss)
                    if best is None or cand < best:
                        best = cand
    return (total_rss - (best[1] if best else 0)) / 2**20


def overhead_mib(vmm: str, memory_mib: int) -> float:
    argv = argv_for(vmm, guest_path("serial"), memory_mib=memory_mib)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout and proc.stdin
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"ready: serial" not in seen and time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        time.sleep(0.3)  # let the guest settle in its wait loop
        return _smaps_overhead(proc.pid, memory_mib * 2**20)
    finally:
        try:
            proc.stdin.write(b"done\n")
            proc.stdin.close()
            proc.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--memory", type=int, default=128, help="guest MiB")
    ap.add_argument("--exits", type=int, default=20000, help="port exits timed per run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up (its finally blocks)
    if args.runs < 5:
        ap.error("--runs must be 5 or more")
    build()
    tsc = host_tsc_khz()
    res: dict[str, list[float]] = {k: [] for k in
                                  ("vnix_first", "vnix_ready", "qemu_ready", "vnix_exit", "qemu_exit",
                                   "vnix_over", "qemu_over")}
    for i in range(args.runs):
        order = ("vnix", "qemu") if i % 2 == 0 else ("qemu", "vnix")
        for vmm in order:
            res[f"{vmm}_ready"].append(ready_ms(vmm, args.memory))
            res[f"{vmm}_exit"].append(exit_us(vmm, args.exits, tsc))
            res[f"{vmm}_over"].append(overhead_mib(vmm, args.memory))
            if vmm == "vnix":
                res["vnix_first"].append(first_instruction_ms(args.memory))
        if not args.json:
            print(f"round {i + 1}/{args.runs} done", file=sys.stderr)
    out = {
        "runs": args.runs,
        "guest": "testkit boot/exits/serial",
        "memory_mib": args.memory,
        "tsc_khz": tsc,
        "vnix_first_instr_ms": round(_median(res["vnix_first"]), 2),
        "vnix_ready_ms": round(_median(res["vnix_ready"]), 2),
        "qemu_ready_ms": round(_median(res["qemu_ready"]), 2),
        "ratio_ready": round(_median(res["vnix_ready"]) / _median(res["qemu_ready"]), 3),
        "vnix_exit_us": round(_median(res["vnix_exit"]), 2),
        "qemu_exit_us": round(_median(res["qemu_exit"]), 2),
        "ratio_exit": round(_median(res["vnix_exit"]) / _median(res["qemu_exit"]), 3),
        "vnix_overhead_mib": round(_median(res["vnix_over"]), 2),
        "qemu_overhead_mib": round(_median(res["qemu_over"]), 2),
        "samples": {k: [round(x, 2) for x in v] for k, v in res.items()},
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "samples":
                print(f"{k:22} {v}")


if __name__ == "__main__":
    main()
