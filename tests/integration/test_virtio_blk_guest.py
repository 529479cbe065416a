"""The virtio_blk test-kit guest under vnix and under QEMU (-M pc, virtio-blk-pci modern):
same report, same bytes on disk, data survives a reboot, read-only disks stay untouched."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vnix.vmm.devices.virtio.kit import Disk, run

pytestmark = [
    pytest.mark.kvm, pytest.mark.qemu,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
]


def blank(path: Path, size: int = 4 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_same_report_and_same_disk_as_qemu(tmp_path: Path) -> None:
    ours, theirs = blank(tmp_path / "vnix.raw"), blank(tmp_path / "qemu.raw")
    v = run("vnix", "virtio_blk", disks=(Disk(str(ours)),))
    q = run("qemu", "virtio_blk", disks=(Disk(str(theirs)),))
    assert q.passed, q.output + q.stderr
    assert v.passed, v.output + v.stderr
    assert v.report.lines == q.report.lines
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.read_bytes()[8 * 512 : 8 * 512 + 4096] != bytes(4096)  # the pattern is there


def test_writes_survive_a_reboot(tmp_path: Path) -> None:
    disk = blank(tmp_path / "d.raw")
    first = run("vnix", "virtio_blk", disks=(Disk(str(disk)),), cmdline="phase=write")
    assert first.passed, first.output
    second = run("vnix", "virtio_blk", disks=(Disk(str(disk)),), cmdline="phase=read")
    assert second.passed, second.output
    assert second.report.facts["pattern_mismatches"] == "0"
    fresh = run("vnix", "virtio_blk", disks=(Disk(str(blank(tmp_path / "e.raw"))),), cmdline="phase=read")
    assert fresh.report.facts["pattern_mismatches"] != "0"  # the check can fail


def test_readonly_disk_is_not_written(tmp_path: Path) -> None:
    disk = blank(tmp_path / "ro.raw")
    v = run("vnix", "virtio_blk", disks=(Disk(str(disk), readonly=True),), cmdline="phase=write")
    assert v.report.facts["write_status"] == "1"  # VIRTIO_BLK_S_IOERR
    assert disk.read_bytes() == bytes(4 << 20)


def test_qcow2_overlay_matches_qemu_and_base_is_untouched(tmp_path: Path) -> None:
    import hashlib
    import subprocess

    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * (4 << 12))  # 4 MiB, not zero: copy-on-write shows
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    overlays = {}
    for vmm in ("vnix", "qemu"):
        p = tmp_path / f"{vmm}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(p)], check=True)
        overlays[vmm] = p
    v = run("vnix", "virtio_blk", disks=(Disk(str(overlays["vnix"]), "qcow2"),))
    q = run("qemu", "virtio_blk", disks=(Disk(str(overlays["qemu"]), "qcow2"),))
    assert q.passed and v.passed, v.output + v.stderr
    assert v.report.lines == q.report.lines
    check = subprocess.run(["qemu-img", "check", str(overlays["vnix"])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    cmp = subprocess.run(["qemu-img", "compare", str(overlays["vnix"]), str(overlays["qemu"])],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest
