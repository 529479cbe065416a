"""Run the virtio test-kit guests (guests/testkit/virtio_*.c) under vnix and under QEMU.

QEMU's microvm has no PCI, so the reference is ``-M pc`` booting the same PVH ELF through
``-kernel`` (SeaBIOS runs first; the guest masks the 8259 it leaves on). Devices are modern-only
virtio-pci (``disable-legacy=on``) so both VMMs show 1af4:1040+id. Used by the integration
tests and the benchmarks, so both run exactly the same commands.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from vnix.testkit.report import GuestReport, parse_output
from vnix.testkit.runner import TESTKIT_DIR, build, qemu_argv, vnix_argv

Vmm = Literal["vnix", "qemu"]


@dataclass(frozen=True)
class Disk:
    path: str
    format: str = "raw"
    readonly: bool = False


@dataclass(frozen=True)
class Nic:
    """A virtio-net NIC on an existing tap (``bridge``: vnix enslaves the tap to it; for QEMU
    the caller puts the tap on the bridge, since ``script=no``)."""

    tap: str
    mac: str
    bridge: str | None = None


@dataclass(frozen=True)
class KitRun:
    vmm: Vmm
    status: int | None
    output: str
    stderr: str
    report: GuestReport
    wall_s: float

    @property
    def passed(self) -> bool:
        r = self.report
        return self.status == 1 and r.complete and bool(r.checks) and all(r.checks.values())


def guest_elf(name: str) -> Path:
    elf = TESTKIT_DIR / "build" / f"{name}.elf"
    src = TESTKIT_DIR / f"{name}.c"
    if not elf.is_file() or (src.is_file() and src.stat().st_mtime > elf.stat().st_mtime):
        build()
    return elf


def argv_for(vmm: Vmm, name: str, *, disks: tuple[Disk, ...] = (), nics: tuple[Nic, ...] = (), memory_mib: int = 64,
             cmdline: str = "", accel: Literal["kvm", "tcg"] = "kvm", extra: tuple[str, ...] = ()) -> list[str]:
    elf = guest_elf(name)
    if vmm == "vnix":
        argv = vnix_argv(elf, memory_mib=memory_mib, cmdline=cmdline)
        for d in disks:
            argv += ["--disk", f"{d.path},format={d.format}" + (",readonly=on" if d.readonly else "")]
        for n in nics:
            argv += ["--net", f"tap,name={n.tap},mac={n.mac}" + (f",bridge={n.bridge}" if n.bridge else "")]
        return argv + list(extra)
    argv = qemu_argv(elf, memory_mib=memory_mib, cmdline=cmdline, accel=accel)
    argv[argv.index("-M") + 1] = "pc"
    for i, d in enumerate(disks):
        argv += ["-drive", f"file={d.path},format={d.format},if=none,id=d{i}" + (",readonly=on" if d.readonly else ""),
                 "-device", f"virtio-blk-pci,drive=d{i},disable-legacy=on"]
    for i, n in enumerate(nics):  # no vhost here; romfile= keeps SeaBIOS from loading iPXE
        argv += ["-netdev", f"tap,id=n{i},ifname={n.tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n{i},mac={n.mac},disable-legacy=on,romfile="]
    if name == "virtio_balloon":  # vnix gives every VM a balloon; QEMU only when asked
        argv += ["-device", "virtio-balloon-pci,disable-legacy=on,free-page-reporting=on"]
    if name == "virtio_rng":  # vnix gives every VM a virtio-rng; QEMU only when asked
        argv += ["-device", "virtio-rng-pci,disable-legacy=on"]
    return argv + list(extra)


def run(vmm: Vmm, name: str, *, timeout: float = 120, **kw: object) -> KitRun:
    argv = argv_for(vmm, name, **kw)  # type: ignore[arg-type]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, out, err = None, exc.stdout or b"", exc.stderr or b""
    text = out.decode("utf-8", "replace")
    return KitRun(vmm, status, text, err.decode("utf-8", "replace"), parse_output(text), time.monotonic() - start)


def qmp_balloon(path: str, memory_mib: int, target_mib: int, timeout: float = 10.0) -> None:
    """QEMU's balloon target is the guest memory to keep: ask for ``memory - target`` MiB
    (QMP ``balloon``, qapi/machine.json), so its num_pages equals vnix's ``--balloon``."""
    import json
    import socket

    end = time.monotonic() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
    with s, s.makefile("rw") as f:
        f.readline()  # greeting
        for cmd in ({"execute": "qmp_capabilities"},
                    {"execute": "balloon", "arguments": {"value": (memory_mib - target_mib) << 20}}):
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    break
            if "error" in reply:
                raise RuntimeError(f"QMP {cmd['execute']}: {reply['error']}")


def run_interactive(vmm: Vmm, name: str, on_line: Callable[[str, subprocess.Popen[bytes]], None], *,
                    timeout: float = 120, balloon_mib: int = 0, memory_mib: int = 64, **kw: object) -> KitRun:
    """Run a guest that waits for the host between steps: ``on_line(line, process)`` sees each
    serial line as it comes (and may measure the process or write to its stdin).
    ``balloon_mib``: the balloon target, set at start-up for vnix and over QMP for QEMU."""
    import os
    import tempfile
    import threading

    extra = tuple(kw.pop("extra", ()))  # type: ignore[arg-type]
    qmp = None
    if balloon_mib and vmm == "vnix":
        extra += ("--balloon", f"{balloon_mib}M")
    elif balloon_mib:
        qmp = os.path.join(tempfile.mkdtemp(prefix="vnix-qmp-"), "qmp.sock")
        extra += ("-qmp", f"unix:{qmp},server=on,wait=off")
    argv = argv_for(vmm, name, memory_mib=memory_mib, extra=extra, **kw)  # type: ignore[arg-type]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    drain.start()
    lines: list[str] = []
    try:
        if qmp:
            qmp_balloon(qmp, memory_mib, balloon_mib)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            on_line(line.rstrip("\r\n"), proc)
        status = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drain.join(5)
        if qmp:
            import shutil

            shutil.rmtree(os.path.dirname(qmp), ignore_errors=True)
    timed_out = status < 0
    text = "".join(lines)
    return KitRun(vmm, None if timed_out else status, text, b"".join(err).decode("utf-8", "replace"),
                  parse_output(text), time.monotonic() - start)


if __name__ == "__main__":  # python -m vnix.vmm.devices.virtio.kit vnix|qemu GUEST DISK
    r = run(sys.argv[1], sys.argv[2], disks=tuple(Disk(p) for p in sys.argv[3:]))  # type: ignore[arg-type]
    print(r.output)
    print("status", r.status, "passed", r.passed, file=sys.stderr)
