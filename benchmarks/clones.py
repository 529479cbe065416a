"""Clone benchmark (issue 4): N copy-on-write clones of one snapshotted guest.

The guest is the ``clone_identity`` test-kit guest (the tiny Linux guest cannot boot on this
host's KVM, see ../shared/notes/kvm-on-these-machines.md), booted with vsock and a qcow2 disk
and snapshotted while it sleeps waiting for its identity. Then:

* a clone server (:mod:`vnix.vmm.clone`) is started for the snapshot (its start-up, which loads
  and checks the file once, is reported as ``server_start_ms`` and not counted below);
* ``restored_s``: wall time from the first clone request until all N clones answered that their
  vCPU runs (each its own forked process, KVM VM, CID, vsock socket, serial socket and stats
  JSON path (what the native driver gives a clone) and qcow2 overlay made with
  ``qemu-img create -b``; overlays are made before the clock starts); ``burst_restore_ms``:
  each clone's own time from its request read to its vCPU in KVM_RUN (median, p90);
* ``answered_s``: from the same start until every clone answered its identity over vsock
  (CONNECT, ``name= addr= seed=``, the guest's ``identity NAME RANDOM`` line);
* memory once all are idle: each clone's USS and PSS (psutil ``memory_full_info``), the
  server's, and their PSS sum (what the clones and server take of the host together);
* ``restore_ms`` (issue 4's figure, <= 10 ms): then ``--latency`` clones (10) one at a time,
  0.25 s apart (a server asked for a VM now and then, its idle children ready), each clone's
  own request -> KVM_RUN time; ``restore_client_ms``: the same requests as the client sees
  them (request sent -> answer read: the socket round trips added);
* QEMU for one VM in the same run: migrate to a file and ``-incoming`` from it
  (``benchmarks/snapshot.py``'s code, its ``snapshot_dirty`` guest, 32 MiB).

``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from vnix.testkit.errors import TestkitError
from vnix.testkit.runner import build
from vnix.testkit.snapshots import IDENTITY_GUEST, IDENTITY_PORT, identity_snapshot
from vnix.vmm.clone import CloneServer, CloneSpec, send_identity

sys.path.insert(0, str(Path(__file__).parent))
from snapshot import qemu_save_restore, summary  # noqa: E402

GUEST, PORT = IDENTITY_GUEST, IDENTITY_PORT
MIB = 1 << 20


def base_snapshot(tmp: Path, mib: int) -> tuple[Path, Path]:
    try:
        return identity_snapshot(tmp, mib=mib)
    except TestkitError as exc:
        raise SystemExit(str(exc)) from None


def latency(server: CloneServer, tmp: Path, disk: Path, n: int, pids: list[int],
            gap: float = 0.25) -> tuple[list[float], list[float]]:
    """``n`` clones one at a time, ``gap`` s apart (the server idle in between, as when a VM is
    asked for now and then): each clone's own restore time (request read -> vCPU in KVM_RUN)
    and the client's (request sent -> answer read)."""
    single, client = [], []
    for i in range(n):
        overlay = tmp / f"l{i}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)], check=True)
        spec = CloneSpec(name=f"single-{i}", serial_log=str(tmp / f"l{i}.log"), vsock_uds=str(tmp / f"l{i}.v"),
                         cid=5000 + i, disks=[f"{overlay},format=qcow2"], serial_sock=str(tmp / f"l{i}.s"),
                         stats_json=str(tmp / f"l{i}.stats.json"))
        time.sleep(gap)
        t = time.monotonic()
        answer = server.clone(spec)
        client.append((time.monotonic() - t) * 1000)
        single.append(float(answer["restore_ms"]))  # type: ignore[arg-type]
        pids.append(int(answer["pid"]))  # type: ignore[call-overload]
    return single, client


def clones(tmp: Path, count: int, mib: int, workers: int, latency_count: int = 10) -> dict[str, Any]:
    snap, disk = base_snapshot(tmp, mib)
    specs = []
    for i in range(count):
        overlay = tmp / f"c{i}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)], check=True)
        specs.append(CloneSpec(name=f"clone-{i}", serial_log=str(tmp / f"c{i}.log"), vsock_uds=str(tmp / f"c{i}.v"),
                               cid=1000 + i, disks=[f"{overlay},format=qcow2"],
                               serial_sock=str(tmp / f"c{i}.s"), stats_json=str(tmp / f"c{i}.stats.json")))
    t = time.monotonic()
    server = CloneServer(str(snap), str(tmp / "clones.sock"), log=str(tmp / "server.log"))
    server_ms = (time.monotonic() - t) * 1000
    pids: list[int] = []
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(server.clone, specs))
        restored_s = time.monotonic() - t0
        pids = [int(a["pid"]) for a in answers]  # type: ignore[call-overload]

        def identity(spec: CloneSpec) -> tuple[float, str]:
            assert spec.vsock_uds is not None
            got = send_identity(spec.vsock_uds, PORT, f"name={spec.name} addr=10.8.{spec.cid // 256}.{spec.cid % 256} "
                                f"seed={secrets.randbits(63)}")
            if not got.startswith(f"identity {spec.name} "):
                raise SystemExit(f"{spec.name}: unexpected answer {got!r}")
            return time.monotonic() - t0, got.split()[-1]

        with ThreadPoolExecutor(workers) as pool:
            got = list(pool.map(identity, specs))
        answered_s = time.monotonic() - t0
        answered = [a for a, _ in got]
        randoms = {r for _, r in got}
        time.sleep(1.0)  # idle
        uss, pss = [], []
        for pid in pids:
            info = psutil.Process(pid).memory_full_info()
            uss.append(info.uss / MIB)
            pss.append(info.pss / MIB)
        sinfo = psutil.Process(server.proc.pid).memory_full_info()
        single, client = latency(server, tmp, disk, latency_count, pids)
    finally:
        server.close()
        ending = []
        for pid in pids:
            try:
                ending.append(psutil.Process(pid))
                os.kill(pid, 15)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        psutil.wait_procs(ending, timeout=10)  # each writes its stats JSON into tmp on the way out
    return {
        "count": count, "guest_mib": mib, "snapshot_bytes": snap.stat().st_size,
        "server_start_ms": round(server_ms, 1),
        "restored_s": round(restored_s, 3), "answered_s": round(answered_s, 3),
        "answered_each_s": summary(answered),
        "burst_restore_ms": summary([float(a["restore_ms"]) for a in answers]),  # type: ignore[arg-type]
        "restore_ms": summary(single), "restore_client_ms": summary(client),
        "distinct_randoms": len(randoms),
        "uss_mib": summary(uss), "pss_mib": summary(pss),
        "server_uss_mib": round(sinfo.uss / MIB, 1), "server_pss_mib": round(sinfo.pss / MIB, 1),
        "total_pss_mib": round(sum(pss) + sinfo.pss / MIB, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--memory", type=int, default=32, help="guest MiB")
    ap.add_argument("--workers", type=int, default=4, help="requests in flight at once")
    ap.add_argument("--latency", type=int, default=10, help="then this many clones one at a time, 0.25 s apart")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up (its finally blocks)
    if not GUEST.is_file():
        build()
    with tempfile.TemporaryDirectory(prefix="vnix-clones-") as d:
        out: dict[str, Any] = {"vnix": clones(Path(d), args.count, args.memory, args.workers, args.latency)}
        if not args.no_qemu and shutil.which("qemu-system-x86_64"):
            out["qemu"] = qemu_save_restore(Path(d), 32, 3)
        time.sleep(0.5)
    if args.json:
        print(json.dumps(out))
    else:
        v = out["vnix"]
        print(f"{v['count']} clones of a {v['guest_mib']} MiB guest: restored and running in {v['restored_s']} s, "
              f"all answered over vsock in {v['answered_s']} s ({v['distinct_randoms']} distinct random numbers)")
        print(f"per clone restore (request -> KVM_RUN) in the burst: median {v['burst_restore_ms']['median']} ms, "
              f"p90 {v['burst_restore_ms']['p90']} ms")
        print(f"one clone at a time: restore median {v['restore_ms']['median']} ms, p90 {v['restore_ms']['p90']} ms; "
              f"as the client sees it (request sent -> answer) median {v['restore_client_ms']['median']} ms")
        print(f"memory per idle clone: USS median {v['uss_mib']['median']} MiB, PSS median {v['pss_mib']['median']} MiB; "
              f"clones + server PSS {v['total_pss_mib']} MiB")
        if "qemu" in out:
            q = out["qemu"]
            print(f"QEMU one VM: save {q['save_ms']} ms, -incoming to running median {q['incoming_to_running_ms']['median']} ms")


if __name__ == "__main__":
    main()
