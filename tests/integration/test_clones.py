"""Copy-on-write clones (issue 4): the ``clone_identity`` test-kit guest is booted with vsock
and virtio-net, snapshotted while it sleeps waiting for its identity, and 10 clones are made
from that one file by the clone server (:mod:`vnix.vmm.clone`), each with its own CID, vsock
socket, tap and MAC and a qcow2 overlay over the snapshot's disk. Each clone is then given a
name, an address and a seed over vsock; each must report that identity on its serial port with
its own MAC and a random number no other clone drew.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from vnix.testkit.snapshots import IDENTITY_PORT, identity_snapshot
from vnix.vmm.clone import CloneServer, CloneSpec, send_identity

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img"),
]

PORT = IDENTITY_PORT
N = 10


def wait_file_text(path: Path, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = path.read_text(errors="replace") if path.exists() else ""
        if text in got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in {path}: {got[-500:]!r}")


def make_snapshot(tmp: Path) -> tuple[Path, Path]:
    """Boot the guest, snapshot it asleep in its wait, stop it: (snapshot, its disk)."""
    return identity_snapshot(tmp, tap="vnxcl0", mac="52:54:00:c1:00:00")


@pytest.mark.parametrize("prefork", [2, 0])
def test_ten_clones_each_take_their_own_identity(tmp_path: Path, prefork: int) -> None:
    """``prefork`` 2: each request goes to an idle pre-forked child (the server's default); 0: a
    child forked for each request."""
    snap, disk = make_snapshot(tmp_path)
    server = CloneServer(str(snap), str(tmp_path / "clones.sock"), log=str(tmp_path / "server.log"), prefork=prefork)
    pids: list[int] = []
    idle: list[psutil.Process] = []
    try:
        specs = []
        for i in range(1, N + 1):
            overlay = tmp_path / f"c{i}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)],
                           check=True)
            spec = CloneSpec(name=f"clone-{i}", serial_log=str(tmp_path / f"c{i}.log"),
                             vsock_uds=str(tmp_path / f"c{i}.vsock"), cid=100 + i,
                             disks=[f"{overlay},format=qcow2"], nets=[f"tap,name=vnxcl{i},mac=52:54:00:c1:00:{i:02x}"])
            answer = server.clone(spec)
            pids.append(int(answer["pid"]))  # type: ignore[call-overload]
            specs.append(spec)
        seeds = {spec.name: secrets.randbits(63) for spec in specs}
        answers = {}
        for i, spec in enumerate(specs, 1):
            assert spec.vsock_uds is not None
            answers[spec.name] = send_identity(spec.vsock_uds, PORT,
                                               f"name={spec.name} addr=10.9.0.{i} seed={seeds[spec.name]}")
        reports = {}
        for i, spec in enumerate(specs, 1):
            deadline = time.monotonic() + 20
            while True:  # the whole line: the guest writes it a byte an exit, the log may hold half
                text = wait_file_text(Path(spec.serial_log), "identity: ")
                m = re.search(r"identity: name=(\S+) addr=(\S+) cid=(\d+) mac=(\S+) random=(\d+)\r?\n", text)
                if m or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert m, text
            reports[spec.name] = m.groups()
            name, addr, cid, mac, rnd = m.groups()
            assert (name, addr, int(cid), mac) == (spec.name, f"10.9.0.{i}", 100 + i, f"52:54:00:c1:00:{i:02x}")
            assert answers[spec.name] == f"identity {spec.name} {rnd}"
            assert "inherited random" not in text  # the log is the clone's own: the boot is not replayed
        macs = {r[3] for r in reports.values()}
        randoms = {r[4] for r in reports.values()}
        assert len(macs) == N and len(randoms) == N
        for pid in pids:  # restored, answered, still running
            os.kill(pid, 0)
        deadline = time.monotonic() + 10
        while True:  # the pool is refilled after the last request
            idle = [c for c in psutil.Process(server.proc.pid).children() if c.pid not in pids]
            if len(idle) == prefork or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(idle) == prefork
    finally:
        server.close()
        _, alive = psutil.wait_procs(idle, timeout=10)  # idle children end with their server
        assert not alive
        for pid in pids:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
