"""The cpio "newc" writer, checked against the system's cpio (GNU cpio reads newc)."""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from vnix.images.cpio import CpioWriter

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")


def _archive() -> bytes:
    buf = io.BytesIO()
    with CpioWriter(buf) as w:
        w.dir("etc")
        w.file("etc/hostname", b"vnix\n")
        w.file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)  # parents added
        w.symlink("bin/sh", "/bin/busybox")
        w.chardev("dev/console", 5, 1)
        w.file("odd-size", b"x" * 5)  # exercises the 4-byte padding
    return buf.getvalue()


def test_listing_by_system_cpio() -> None:
    data = _archive()
    out = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=data, capture_output=True,
                         check=True).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in out.splitlines()}
    assert set(lines) == {"etc", "etc/hostname", "bin", "bin/busybox", "bin/sh", "dev",
                          "dev/console", "odd-size"}
    assert lines["dev/console"].startswith("crw-------")
    assert "5," in lines["dev/console"] and " 1 " in lines["dev/console"]  # major 5, minor 1
    assert lines["bin/busybox"].startswith("-rwxr-xr-x")
    assert lines["bin/sh"].startswith("lrwxrwxrwx") and lines["bin/sh"].endswith("/bin/busybox")
    assert lines["etc"].startswith("drwxr-xr-x")
    assert len(data) % 4 == 0


def test_round_trip_contents(tmp_path: Path) -> None:
    data = _archive()
    # extract everything but the device node (creating one needs root, which is the point)
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames", "--nonmatching",
                    "dev/console"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "etc/hostname").read_bytes() == b"vnix\n"
    assert (tmp_path / "bin/busybox").read_bytes() == b"\x7fELF" + bytes(range(256)) * 3
    assert (tmp_path / "odd-size").read_bytes() == b"xxxxx"
    assert (tmp_path / "bin/sh").is_symlink()
    assert str((tmp_path / "bin/sh").readlink()) == "/bin/busybox"
    assert (tmp_path / "bin/busybox").stat().st_mode & 0o777 == 0o755


def test_same_input_same_bytes_and_bad_paths() -> None:
    assert _archive() == _archive()
    w = CpioWriter(io.BytesIO())
    with pytest.raises(ValueError):
        w.file("../etc/passwd", b"")
    w.file("a", b"")
    with pytest.raises(ValueError):
        w.file("a", b"")
