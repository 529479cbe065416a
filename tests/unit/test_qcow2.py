"""qcow2 overlays on a shared base: what vnix writes passes ``qemu-img check``, equals the same
writes done by QEMU (``qemu-io`` on a twin overlay, compared with ``qemu-img compare``), reads
back what QEMU wrote, and never touches the base."""
from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from vnix.vmm.block import ImageFormatError, ReadOnlyError
from vnix.vmm.block.image import open_image
from vnix.vmm.block.qcow2 import Qcow2Image

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="needs qemu-utils")
MiB = 1 << 20


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def overlay(tmp: Path, name: str, base: str, base_fmt: str, size: str = "16M", extra: tuple[str, ...] = ()) -> Path:
    p = tmp / name
    out = qemu_img("create", "-q", "-f", "qcow2", *extra, "-b", base, "-F", base_fmt, str(p), size)
    assert out.returncode == 0, out.stderr
    return p


def writes(seed: int, size: int, n: int = 30) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.choice([512, 4096, 65536, rng.randrange(1, 300_000)])
        off = rng.randrange(0, size - length)
        out.append((off, rng.randbytes(length)))
    return out


@pytest.mark.parametrize("cluster", ["65536", "4096", "2097152"])
def test_same_writes_as_qemu_on_an_overlay(tmp_path: Path, cluster: str) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(1).randbytes(8 * MiB))  # the overlay is bigger than its base
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    ours = overlay(tmp_path, "ours.qcow2", "base.raw", "raw", extra=("-o", f"cluster_size={cluster}"))
    theirs = overlay(tmp_path, "theirs.qcow2", "base.raw", "raw", extra=("-o", f"cluster_size={cluster}"))
    ops = writes(2, 16 * MiB)
    img = open_image(str(ours), "qcow2")
    for off, data in ops:
        img.writev(off, [memoryview(data)])
    img.write_zeroes(3 * MiB + 100, 70_000)
    img.flush()
    img.close()
    cmds = []
    for i, (off, data) in enumerate(ops):
        (tmp_path / f"w{i}").write_bytes(data)
        cmds += ["-c", f"write -q -s {tmp_path / f'w{i}'} {off} {len(data)}"]
    cmds += ["-c", f"write -q -z {3 * MiB + 100} 70000"]
    out = subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(theirs)], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr, out.stderr
    check = qemu_img("check", str(ours))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    cmp = qemu_img("compare", str(ours), str(theirs))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest


def test_reads_what_qemu_wrote_through_a_qcow2_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(3).randbytes(4 * MiB))
    assert qemu_img("convert", "-O", "qcow2", str(base), str(tmp_path / "base.qcow2")).returncode == 0
    mid = overlay(tmp_path, "mid.qcow2", "base.qcow2", "qcow2", "8M")
    top = overlay(tmp_path, "top.qcow2", "mid.qcow2", "qcow2", "8M")
    expected = bytearray(base.read_bytes()) + bytearray(4 * MiB)
    for image, seed in ((mid, 4), (top, 5)):
        cmds = []
        for i, (off, data) in enumerate(writes(seed, 8 * MiB, 10)):
            (tmp_path / f"{seed}-{i}").write_bytes(data)
            cmds += ["-c", f"write -q -s {tmp_path / f'{seed}-{i}'} {off} {len(data)}"]
            expected[off : off + len(data)] = data
        assert subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(image)], capture_output=True).returncode == 0
    img = Qcow2Image.open(str(top), readonly=True)
    got = bytearray(8 * MiB)
    img.readv(0, [memoryview(got)[: 3 * MiB], memoryview(got)[3 * MiB :]])
    assert got == expected
    with pytest.raises(ReadOnlyError):
        img.writev(0, [b"x" * 512])
    img.close()


def test_compressed_clusters_read(tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    raw.write_bytes((b"compressible " * 200_000)[: 2 * MiB])
    assert qemu_img("convert", "-c", "-O", "qcow2", str(raw), str(tmp_path / "c.qcow2")).returncode == 0
    img = Qcow2Image.open(str(tmp_path / "c.qcow2"), readonly=True)
    got = bytearray(2 * MiB)
    img.readv(0, [memoryview(got)])
    assert got == raw.read_bytes()


@pytest.mark.parametrize("offset, value, why", [
    (0, b"QFI\x00", "not a qcow2"), (4, b"\x00\x00\x00\x04", "version 4"),
    (20, b"\x00\x00\x00\x30", "cluster_bits"), (32, b"\x00\x00\x00\x01", "encrypted"),
    (72, b"\x00" * 7 + b"\x02", "incompatible"), (36, b"\x00\x00\x00\x00", "L1 table"),
    (40, b"\x00\x00\x00\x00\x00\x00\x12\x34", "misaligned"),
])
def test_corrupt_headers_are_refused(tmp_path: Path, offset: int, value: bytes, why: str) -> None:
    p = tmp_path / "x.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(p), "64M").returncode == 0
    data = bytearray(p.read_bytes())
    data[offset : offset + len(value)] = value
    p.write_bytes(data)
    with pytest.raises(ImageFormatError, match=why):
        Qcow2Image.open(str(p))
