"""The clone server's rehearsal (:func:`vnix.vmm.snapshot.restore.rehearse`): an idle child
restores the snapshot once into a throwaway VM, so the request's restore runs on pages already
copied. It must touch nothing a running VM or the host owns: no tap opened (the snapshot's tap
may belong to another VM), disks read-only, the vsock socket in a private directory; and it must
leave nothing behind in the child (fds, threads, files).
"""
from __future__ import annotations

import gc
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from vnix.testkit.snapshots import identity_snapshot

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img"),
]

TAP = "vnxrh0"


def snapshot_with_every_backend(tmp: Path) -> tuple[Path, Path]:
    """The clone_identity guest with a qcow2 disk, a NIC on a tap and vsock, snapshotted asleep."""
    return identity_snapshot(tmp, tap=TAP, mac="52:54:00:e4:00:00")


def open_fds() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def test_rehearsal_touches_nothing_outside_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vnix.vmm.devices.virtio.net import tap
    from vnix.vmm.snapshot.load import load_snapshot
    from vnix.vmm.snapshot.restore import _destroy, prepare_vm, rehearse

    snap_path, disk = snapshot_with_every_backend(tmp_path)
    snap = load_snapshot(str(snap_path), verify_memory=True)
    disk_before = disk.read_bytes()

    def no_tap(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("the rehearsal opened a tap")

    monkeypatch.setattr(tap.Tap, "__init__", no_tap)  # NullTap does not call it
    (tmp_path / "base.vsock").unlink(missing_ok=True)  # left by the killed VMM
    gc.collect()  # garbage from before (a closed client's socket) must not count either way
    fds, threads = open_fds(), set(threading.enumerate())
    temp_before = set(os.listdir(tempfile.gettempdir()))
    for _ in range(3):
        assert rehearse(snap, memory_backing="private-mmap") is True
    gc.collect()  # what the rehearsal's own collection left to the next one
    assert open_fds() == fds, "the rehearsal leaked file descriptors"
    assert set(threading.enumerate()) == threads, "the rehearsal left device threads running"
    assert {n for n in set(os.listdir(tempfile.gettempdir())) - temp_before if n.startswith("vnix-rehearsal-")} == set()
    assert disk.read_bytes() == disk_before, "the rehearsal wrote to the snapshot's disk"
    assert not (tmp_path / "base.vsock").exists(), "the rehearsal listened on the snapshot's vsock socket"

    prepared = prepare_vm(snap, memory_backing="private-mmap", dirty_log=False, rehearse_first=True)
    assert prepared.steps_ms["rehearsal"] > 0
    assert "vcpu_registers" in prepared.steps_ms  # CPUID, sregs, regs... set ahead
    vm_fds = lambda: sum(1 for target in open_fds().values() if target.startswith("anon_inode:kvm-vm"))  # noqa: E731
    assert vm_fds() == 2 and len(prepared.deferred) == 1  # the rehearsal's VM waits for the clone to run
    prepared.run_deferred()
    assert vm_fds() == 1 and prepared.deferred == []
    _destroy(prepared)
    gc.collect()
    assert open_fds() == fds


def test_rehearsal_of_a_snapshot_whose_disk_is_gone_fails_quietly(tmp_path: Path) -> None:
    """The request then restores (and reports any error) as without a rehearsal."""
    from vnix.vmm.snapshot.load import load_snapshot
    from vnix.vmm.snapshot.restore import rehearse

    snap_path, disk = snapshot_with_every_backend(tmp_path)
    disk.unlink()
    snap = load_snapshot(str(snap_path), verify_memory=True)  # as the clone server loads it
    gc.collect()
    fds = open_fds()
    assert rehearse(snap, memory_backing="private-mmap") is False
    assert open_fds() == fds
