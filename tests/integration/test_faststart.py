"""``vnix run --driver native --fast`` (issue 4, item 5) with the test kit's ``idle`` guest (ticks
twice a second, echoes serial input): the first run boots it once and saves its booted state
under $VNIX_HOME/faststart/<key>/, the second restores that state (no boot) and the guest
answers on its console, and a changed kernel file means another boot."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vnix.testkit.runner import TESTKIT_DIR

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")]

VNIX = [sys.executable, "-m", "vnix"]
BUILDING = "vnix: fast start: no saved state"


@pytest.fixture(scope="module")
def idle_elf() -> Path:
    subprocess.run(["make", "-s", "-C", str(TESTKIT_DIR), "build/idle.elf"], check=True, capture_output=True)
    return TESTKIT_DIR / "build" / "idle.elf"


class Run:
    """One ``vnix run --fast`` with its console on files; stdin a pipe to type into."""

    def __init__(self, tmp: Path, home: Path, kernel: Path, tag: str) -> None:
        self.out, self.err = tmp / f"{tag}.out", tmp / f"{tag}.err"
        env = dict(os.environ, VNIX_HOME=str(home))
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(VNIX + ["run", "--driver", "native", "--fast", "--kernel", str(kernel),
                                             "--initrd", "", "--memory", "32M"],
                                     stdin=subprocess.PIPE, stdout=self.out.open("wb"), stderr=self.err.open("wb"),
                                     env=env)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, text: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert self.proc.poll() is None, f"vnix run ended ({self.proc.returncode}): {self.err.read_text()}"
            assert time.monotonic() < deadline, f"{text!r} not in {self.text()[-300:]!r}; {self.err.read_text()}"
            time.sleep(0.02)
        return time.monotonic() - self.t0

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


def _run_and_echo(tmp: Path, home: Path, kernel: Path, tag: str) -> Run:
    r = Run(tmp, home, kernel, tag)
    try:
        r.wait("tick 1")
        r.type(f"hello {tag}")
        r.wait(f"echo: hello {tag}")
    finally:
        r.stop()
    return r


def test_first_run_builds_then_runs_restore_and_a_new_kernel_rebuilds(tmp_path: Path, idle_elf: Path) -> None:
    home = tmp_path / "home"
    kernel = tmp_path / "idle.elf"
    shutil.copy(idle_elf, kernel)
    cache = home / "faststart"

    first = _run_and_echo(tmp_path, home, kernel, "first")
    assert BUILDING in first.err.read_text()
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "state.snap").is_file() and (entries[0] / "inputs.json").is_file()
    assert "ready: idle" not in first.text()  # the console shows the restored guest, not the boot

    second = _run_and_echo(tmp_path, home, kernel, "second")
    err = second.err.read_text()
    assert BUILDING not in err, err
    assert "ready: idle" not in second.text() and "TESTKIT BEGIN" not in second.text()  # restored, not booted
    assert sorted(p.name for p in cache.iterdir()) == [entries[0].name]

    with kernel.open("ab") as f:  # another kernel file (a byte past the ELF's segments changes nothing else)
        f.write(b"\0")
    third = _run_and_echo(tmp_path, home, kernel, "third")
    assert BUILDING in third.err.read_text()
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_fast_refuses_what_it_cannot_restore(tmp_path: Path, idle_elf: Path) -> None:
    env = dict(os.environ, VNIX_HOME=str(tmp_path / "home"))
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    base = VNIX + ["run", "--fast", "--kernel", str(idle_elf), "--initrd", "", "--memory", "32M"]
    for extra, words in ((["--driver", "qemu"], "needs the native VMM"),
                         (["--driver", "native", "--disk", str(disk)], "cannot be used with --disk"),
                         (["--driver", "native", "--", "true"], "cannot run a command")):
        p = subprocess.run(base + extra, capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode != 0 and words in p.stderr, (extra, p.stderr)
    assert not (tmp_path / "home" / "faststart").exists()
