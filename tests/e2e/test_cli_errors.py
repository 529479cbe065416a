"""Every bad input to `vnix run` / `vnix image`: exit status 2, exactly one line on stderr, no
traceback, and no VM started (these run in well under a second each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VNIX = [sys.executable, "-m", "vnix"]


@pytest.fixture
def fake_linux(tmp_path: Path) -> tuple[Path, Path]:
    """A file with a valid bzImage header (and nothing else) and a small initrd."""
    kernel = bytearray(4096)
    kernel[0x1FE:0x200] = b"\x55\xaa"
    kernel[0x202:0x206] = b"HdrS"
    (tmp_path / "bzImage").write_bytes(bytes(kernel))
    (tmp_path / "initrd").write_bytes(b"070701" + bytes(1000))
    return tmp_path / "bzImage", tmp_path / "initrd"


def _vnix(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VNIX_HOME": str(home)}
    return subprocess.run(VNIX + list(args), capture_output=True, text=True, timeout=60, env=env)


def _assert_usage_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("vnix: error:")
    for word in words:
        assert word in lines[0], lines[0]
    assert proc.stdout == ""


def test_unknown_image(tmp_path: Path) -> None:
    _assert_usage_error(_vnix("run", "--image", "nosuch", "--", "true", home=tmp_path), "nosuch")
    _assert_usage_error(_vnix("image", "build", "nosuch", home=tmp_path), "nosuch")


def test_image_not_built(tmp_path: Path) -> None:
    _assert_usage_error(_vnix("run", "--image", "tiny", "--", "true", home=tmp_path),
                        "vnix image build tiny")


def test_missing_kernel(tmp_path: Path, fake_linux: tuple[Path, Path]) -> None:
    _, initrd = fake_linux
    _assert_usage_error(_vnix("run", "--kernel", str(tmp_path / "nope"), "--initrd", str(initrd),
                              home=tmp_path), "does not exist")


def test_corrupt_kernel(tmp_path: Path, fake_linux: tuple[Path, Path]) -> None:
    _, initrd = fake_linux
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(os.urandom(8192))
    _assert_usage_error(_vnix("run", "--kernel", str(bad), "--initrd", str(initrd), home=tmp_path),
                        "magic")


def test_initrd_bigger_than_memory(tmp_path: Path, fake_linux: tuple[Path, Path]) -> None:
    kernel, _ = fake_linux
    big = tmp_path / "big.cpio"
    with big.open("wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: costs no disk
    _assert_usage_error(_vnix("run", "--kernel", str(kernel), "--initrd", str(big),
                              "--memory", "256M", home=tmp_path), "does not fit")


@pytest.mark.parametrize(("memory", "word"), [
    ("32M", "too small"), ("100T", "more than this host has"), ("lots", "cannot read memory size"),
])
def test_bad_memory(tmp_path: Path, fake_linux: tuple[Path, Path], memory: str, word: str) -> None:
    kernel, initrd = fake_linux
    _assert_usage_error(_vnix("run", "--kernel", str(kernel), "--initrd", str(initrd),
                              "--memory", memory, home=tmp_path), word)


@pytest.mark.parametrize("cpus", ["0", "99"])
def test_bad_cpus(tmp_path: Path, fake_linux: tuple[Path, Path], cpus: str) -> None:
    kernel, initrd = fake_linux
    _assert_usage_error(_vnix("run", "--kernel", str(kernel), "--initrd", str(initrd),
                              "--cpus", cpus, home=tmp_path), "--cpus")


def test_bad_driver_accel_and_unknown_option(tmp_path: Path, fake_linux: tuple[Path, Path]) -> None:
    kernel, initrd = fake_linux
    common = ["run", "--kernel", str(kernel), "--initrd", str(initrd)]
    _assert_usage_error(_vnix(*common, "--driver", "xen", home=tmp_path), "--driver")
    _assert_usage_error(_vnix(*common, "--accel", "hvf", home=tmp_path), "--accel")
    _assert_usage_error(_vnix(*common, "--cpu", "2", home=tmp_path), "--cpu")


def test_missing_disk(tmp_path: Path, fake_linux: tuple[Path, Path]) -> None:
    kernel, initrd = fake_linux
    _assert_usage_error(_vnix("run", "--kernel", str(kernel), "--initrd", str(initrd),
                              "--disk", str(tmp_path / "nodisk.img"), home=tmp_path), "nodisk.img")


def test_command_too_long(tmp_path: Path, fake_linux: tuple[Path, Path]) -> None:
    kernel, initrd = fake_linux
    _assert_usage_error(_vnix("run", "--kernel", str(kernel), "--initrd", str(initrd),
                              "--", "echo", "x" * 3000, home=tmp_path), "command line")
