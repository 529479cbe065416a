"""Snapshot benchmark: create time and size (full and diff) for 256 MiB and 1 GiB guests,
restore-to-running latency, against QEMU's migrate-to-file and ``-incoming`` in the same run.

The guest is the ``snapshot_dirty`` test-kit guest with a virtio-blk disk: it fills every page
of its RAM (ring 3, one word a page: all of RAM is then in use, the worst case for a full
snapshot), then waits on the serial port; each diff follows a command that writes 4 pages.

* vnix create: ``PUT /snapshot`` on the control API (the VMM pauses, saves, resumes);
  ``took_ms`` is the API's own time, ``file_bytes`` the file's length, ``disk_bytes`` what it
  occupies (never-touched pages are holes).
* vnix restore: ``python -m vnix.vmm --restore FILE`` (``copy`` and ``private-mmap``), from the
  VMM's own stats marks: ``t0 -> first_kvm_run`` (the VMM's main started -> the restored vCPU
  enters KVM_RUN) and ``process -> first_kvm_run`` (adds the interpreter's start-up from
  /proc/self/stat, 10 ms resolution). Also in-process: ``load_snapshot`` + ``Machine.from_snapshot``
  in this process.
* vnix restore through a clone server (the product's path from a golden snapshot, issue 4's
  <= 10 ms): ``--restores`` clones one at a time, 0.25 s apart, RAM mapped MAP_PRIVATE from the
  file, each clone's own request -> KVM_RUN (``restore_ms``) and the client's view
  (``client_ms``: request sent -> answer read).
* QEMU (-M pc, the same guest and disk, KVM): QMP ``migrate exec:cat > FILE`` of the running
  guest until ``completed``; restore: ``-incoming "exec:cat FILE"``, process start until QMP
  ``query-status`` says running.

Medians and p90 over ``--restores`` runs. ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vnix.testkit.runner import TESTKIT_DIR, build
from vnix.vmm.devices.virtio.kit import Disk, argv_for
from vnix.vmm.launch import vmm_argv

GUEST = TESTKIT_DIR / "build" / "snapshot_dirty.elf"


def p90(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "p90": round(p90(values), 3), "n": len(values)}


class Guest:
    """A running guest (either VMM) we talk to over its serial port (stdin/stdout)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.out = b""

    def wait_for(self, text: bytes, times: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.out.count(text) < times:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
                raise SystemExit(f"guest: no {text!r}: {self.out[-300:]!r} {err[-500:]}")
            try:
                self.out += self.proc.stdout.read() or b""  # type: ignore[union-attr]
            except BlockingIOError:
                pass
            time.sleep(0.005)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def api(sock: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://vmm", timeout=300) as c:
        r = c.request(method, path, json=body)
    if r.status_code != 200:
        raise SystemExit(f"API {method} {path}: {r.status_code} {r.text}")
    return r.json()


# -- vnix -------------------------------------------------------------------------------------------
def vnix_create(tmp: Path, mib: int, rounds: int) -> tuple[dict[str, Any], Path]:
    disk = tmp / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    sock = str(tmp / "api.sock")
    g = Guest(vmm_argv(["--kernel", str(GUEST), "--memory", f"{mib}M", "--debug-exit", "--disk", str(disk),
                        "--api-sock", sock]))
    try:
        g.wait_for(b"waiting\n")
        g.send(b"f")
        g.wait_for(b"filled ")
        full_ms, diff_ms, infos = [], [], {}
        for i in range(rounds):
            a = api(sock, "PUT", "/snapshot", {"path": str(tmp / f"full{i}.snap")})
            full_ms.append(a["took_ms"])
            infos["full"] = a["info"]
        for i in range(rounds):
            g.send(b"1")
            g.wait_for(b"done 1\n", i + 1)
            a = api(sock, "PUT", "/snapshot", {"path": str(tmp / f"diff{i}.snap"), "memory": "diff"})
            diff_ms.append(a["took_ms"])
            infos["diff"] = a["info"]
    finally:
        g.kill()
    for i in range(1, rounds):
        (tmp / f"full{i}.snap").unlink()
    out = {
        "full_create_ms": summary(full_ms), "full_file_bytes": infos["full"]["file_bytes"],
        "full_disk_bytes": infos["full"]["disk_bytes"], "full_pages": infos["full"]["pages"],
        "diff_create_ms": summary(diff_ms), "diff_file_bytes": infos["diff"]["file_bytes"],
        "diff_pages": infos["diff"]["pages"], "diff_vmm_pages": len(infos["diff"]["vmm_pages"]),
    }
    return out, tmp / "full0.snap"


def vnix_restore(snap: Path, backing: str, runs: int) -> dict[str, Any]:
    t0_ms, proc_ms = [], []
    stats = snap.with_suffix(".stats.json")
    for _ in range(runs):
        g = Guest(vmm_argv(["--restore", str(snap), "--memory-backing", backing, "--stats-json", str(stats)]))
        g.send(b"0")  # the restored guest answers: it runs
        g.wait_for(b"done 0\n")
        g.proc.send_signal(signal.SIGTERM)
        g.proc.wait(30)
        s = json.loads(stats.read_text())
        first = s["timings_ms"]["first_kvm_run"]
        t0_ms.append(first)
        proc_ms.append(first + (s["python_startup_ms"] or 0.0))
    return {"t0_to_first_kvm_run_ms": summary(t0_ms), "process_to_first_kvm_run_ms": summary(proc_ms)}


def in_process_restore(snap: Path, backing: str, runs: int) -> dict[str, Any]:
    from vnix.vmm.machine import Machine
    from vnix.vmm.snapshot import load_snapshot
    from vnix.vmm.stats import Stats

    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        s = load_snapshot(str(snap), verify_memory=False)
        m = Machine.from_snapshot(s, Stats(), memory_backing=backing)  # type: ignore[arg-type]
        ms.append((time.perf_counter() - t) * 1000)
        s.close()
        m.pci.close()
        assert m.parts is not None
        for v in m.parts.vcpus:
            v.close()
        m.parts.vm.close()
        m.parts.kvm.close()
        m.parts.mem.close()
    return summary(ms)


def clone_server_restore(tmp: Path, snap: Path, runs: int, gap: float = 0.25) -> dict[str, Any]:
    """The product path to a running VM from a snapshot (what the node agent does for a golden
    snapshot, :mod:`vnix.vmm.clone`): ``runs`` clones asked of one clone server, one at a time,
    ``gap`` s apart, each with its own qcow2 overlay over the snapshot's disk; each clone's own
    request -> KVM_RUN time, and the client's request sent -> answer read. Each clone is stopped
    once measured."""
    from vnix.vmm.clone import CloneServer, CloneSpec

    server = CloneServer(str(snap), str(tmp / "clones.sock"), log=str(tmp / "clone-server.log"))
    own, client = [], []
    try:
        for i in range(runs):
            overlay = tmp / f"clone{i}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(tmp / "disk.img"),
                            str(overlay)], check=True)
            time.sleep(gap)
            t = time.monotonic()
            answer = server.clone(CloneSpec(name=f"c{i}", serial_log=str(tmp / f"clone{i}.log"),
                                            disks=[f"{overlay},format=qcow2"]))
            client.append((time.monotonic() - t) * 1000)
            own.append(float(answer["restore_ms"]))  # type: ignore[arg-type]
            os.kill(int(answer["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    finally:
        server.close()
    return {"restore_ms": summary(own), "client_ms": summary(client)}


# -- QEMU -------------------------------------------------------------------------------------------
class Qmp:
    def __init__(self, path: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX)
            try:
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.001)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: Any) -> Any:
        self.f.write(json.dumps({"execute": name, "arguments": args} if args else {"execute": name}) + "\n")
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise SystemExit(f"QMP {name}: {reply['error']}")

    def close(self) -> None:
        self.f.close()
        self.s.close()


def qemu_save_restore(tmp: Path, mib: int, runs: int) -> dict[str, Any]:
    disk = tmp / "qdisk.img"
    disk.write_bytes(bytes(1 << 20))
    sock = str(tmp / "qmp.sock")
    image = tmp / "qemu.state"
    g = Guest(argv_for("qemu", "snapshot_dirty", disks=(Disk(str(disk)),), memory_mib=mib,
                       extra=("-qmp", f"unix:{sock},server=on,wait=off")))
    try:
        g.wait_for(b"waiting\n")
        g.send(b"f")
        g.wait_for(b"filled ")
        q = Qmp(sock)
        t = time.monotonic()
        q.cmd("migrate", uri=f"exec:cat > {image}")
        while q.cmd("query-migrate").get("status") not in ("completed", "failed"):
            time.sleep(0.002)
        save_ms = (time.monotonic() - t) * 1000
        q.close()
    finally:
        g.kill()
    restore_ms = []
    for _ in range(runs):
        qsock = str(tmp / "qmp-in.sock")
        t = time.monotonic()
        r = Guest(argv_for("qemu", "snapshot_dirty", disks=(Disk(str(disk)),), memory_mib=mib,
                           extra=("-qmp", f"unix:{qsock},server=on,wait=off", "-incoming", f"exec:cat {image}")))
        q = Qmp(qsock)
        while q.cmd("query-status").get("status") != "running":
            time.sleep(0.0005)
        restore_ms.append((time.monotonic() - t) * 1000)
        q.close()
        r.kill()
    return {"save_ms": round(save_ms, 1), "file_bytes": image.stat().st_size,
            "incoming_to_running_ms": summary(restore_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024", help="guest RAM sizes in MiB (default 256,1024)")
    ap.add_argument("--rounds", type=int, default=3, help="snapshots of each kind a size (default 3)")
    ap.add_argument("--restores", type=int, default=10, help="restores of each kind (default 10)")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up (its finally blocks)
    if not GUEST.is_file():
        build()
    results: dict[str, Any] = {}
    for mib in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="vnix-snap-bench-") as d:
            tmp = Path(d)
            r, full = vnix_create(tmp, mib, args.rounds)
            for backing in ("copy", "private-mmap"):
                r[f"restore_{backing}"] = vnix_restore(full, backing, args.restores)
                r[f"in_process_restore_{backing}_ms"] = in_process_restore(full, backing, args.restores)
            r["clone_server_restore"] = clone_server_restore(tmp, full, args.restores)
            if not args.no_qemu:
                r["qemu"] = qemu_save_restore(tmp, mib, args.restores)
            results[f"{mib}MiB"] = r
        if not args.json:
            print(f"== {mib} MiB", file=sys.stderr)
            print(json.dumps(r, indent=1), file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
