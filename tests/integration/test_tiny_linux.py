"""The tiny Linux guest under `vnix run` (QEMU; TCG on this build machine, ~6 s a boot).

Three boots in all: a command run that checks several things at once, one with a single vCPU,
and an interactive console session."""
from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

from vnix.images import UnknownImageError
from vnix.images.store import load_image

VNIX = [sys.executable, "-m", "vnix"]

pytestmark = [pytest.mark.qemu]


@pytest.fixture(scope="module", autouse=True)
def tiny_image() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    try:
        load_image("tiny")
    except UnknownImageError:
        pytest.skip("the tiny image is not built (make image)")


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(VNIX + ["run", "--image", "tiny", "--driver", "qemu", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_command_output_status_cpus_memory_and_rootfs() -> None:
    script = ("nproc; awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo; "
              "grep ' / ' /proc/mounts; hostname; exit 7")
    proc = _run("--cpus", "2", "--memory", "4G", "--stats", "--", "sh", "-c", script)
    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.splitlines()
    # only the command's output: no kernel log, no readiness or marker lines
    assert len(lines) == 4, proc.stdout
    assert lines[0] == "2"
    assert 3800 <= int(lines[1]) <= 4096  # a 4 GiB guest sees (nearly) all of it
    assert lines[2].startswith("/dev/vda / ext4 rw")
    assert lines[3] == "vnix"
    assert "using QEMU" in proc.stderr
    m = re.search(r"start -> readiness line\s+([\d.]+) s", proc.stderr)
    assert m and float(m.group(1)) > 0


def test_one_cpu_and_clean_exit() -> None:
    proc = _run("--cpus", "1", "--", "nproc")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1\n"


def _read_until(fd: int, pattern: bytes, timeout: float) -> bytes:
    """Console bytes up to a match of the regular expression ``pattern``."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not seen; console so far: {buf[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"console closed before {pattern!r}: {buf[-2000:]!r}")
            buf += chunk
    return buf


def test_console_readiness_and_typed_input() -> None:
    proc = subprocess.Popen(VNIX + ["run", "--image", "tiny", "--driver", "qemu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    try:
        out = _read_until(proc.stdout.fileno(), rb"vnix-guest: ready [^\n]*\n", 120)
        assert re.search(rb"vnix-guest: ready \(kernel \S+, 1 cpus, \d+ MiB, root /dev/vda\)", out)
        proc.stdin.write(b"echo typed-$((6*7))\n")
        proc.stdin.flush()
        _read_until(proc.stdout.fileno(), b"typed-42", 60)
        proc.stdin.write(b"\x01x")  # Ctrl-A x: QEMU's console mux quits
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
