"""Snapshot and restore of the native VMM, end to end, with the ``snapshot_compute`` test-kit
guest: a ring-3 computation in rounds that writes progress and its result to a virtio-blk disk
and the serial port. The VMM is snapshotted in the middle through its control API (pause, save,
then the process is killed) and restored into a new VMM process (``--restore``); the guest must
finish with the right result (computed here independently), the disk must hold every round,
and the guest's clocks must not have jumped.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from vnix.testkit.report import parse_output
from vnix.testkit.runner import TESTKIT_DIR, build
from vnix.vmm.launch import vmm_argv

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]

GUEST = TESTKIT_DIR / "build" / "snapshot_compute.elf"
ROUNDS, SHIFT = 8, 28
LCG_A, LCG_C, M64 = 6364136223846793005, 1442695040888963407, (1 << 64) - 1


def lcg_jump(x: int, steps: int) -> int:
    """x after ``steps`` steps of x = A x + C (mod 2^64), by composing the affine map."""
    a, c = LCG_A, LCG_C  # the map for 1 step, squared along the bits of steps
    ra, rc = 1, 0
    while steps:
        if steps & 1:
            ra, rc = (a * ra) & M64, (a * rc + c) & M64
        a, c = (a * a) & M64, (a * c + c) & M64
        steps >>= 1
    return (ra * x + rc) & M64


def expected(rounds: int = ROUNDS, shift: int = SHIFT) -> tuple[list[int], int]:
    xs, x = [], 0x243F6A8885A308D3
    for _ in range(rounds):
        x = lcg_jump(x, 1 << shift)
        xs.append(x)
    h = 0xCBF29CE484222325
    for v in xs:
        for b in range(0, 64, 8):
            h = ((h ^ ((v >> b) & 0xFF)) * 0x100000001B3) & M64
    return xs, h


@pytest.fixture(scope="module", autouse=True)
def guest() -> None:
    if not GUEST.is_file():
        build()


class Vmm:
    """A VMM process with its control API socket; stdout collected."""

    def __init__(self, tmp: Path, args: list[str], name: str) -> None:
        self.sock = str(tmp / f"{name}.sock")
        self.stats = tmp / f"{name}.stats.json"
        self.proc = subprocess.Popen(vmm_argv([*args, "--api-sock", self.sock, "--stats-json", str(self.stats)]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.out = b""

    def wait_for(self, text: bytes, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        while text not in self.out:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {text!r} from the guest; output: {self.out[-500:]!r}")
            try:
                self.out += self.proc.stdout.read() or b""
            except BlockingIOError:
                pass
            time.sleep(0.01)

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        with httpx.Client(transport=httpx.HTTPTransport(uds=self.sock), base_url="http://vmm", timeout=60) as c:
            r = c.request(method, path, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def snapshot_and_kill(self, path: Path, memory: str = "full") -> dict:
        answer = self.api("PUT", "/snapshot", {"path": str(path), "memory": memory, "resume": False})
        self.proc.kill()
        self.proc.wait()
        return answer

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.out += out
        return self.proc.returncode, self.out.decode(errors="replace") + "\n" + err.decode(errors="replace")


def start(tmp: Path, disk: Path, name: str = "a") -> Vmm:
    return Vmm(tmp, ["--kernel", str(GUEST), "--memory", "64M", "--debug-exit", "--disk", str(disk),
                     "--cmdline", f"rounds={ROUNDS} shift={SHIFT}"], name)


def check_finished(status: int, text: str, disk: Path) -> dict[str, str]:
    xs, h = expected()
    report = parse_output(text[text.find("TESTKIT BEGIN"):] if "TESTKIT BEGIN" in text else "TESTKIT BEGIN snapshot_compute\n" + text)
    assert status == 1, text[-1500:]
    assert f"result: {h:016x}" in text
    raw = disk.read_bytes()
    assert raw[:512].rstrip(b"\0") == f"RESULT {h:016x}".encode()
    for k, x in enumerate(xs):
        assert raw[512 * (1 + k) : 512 * (2 + k)].rstrip(b"\0") == f"ROUND {k} x={x:016x}".encode()
    assert all(report.checks.values()) and report.checks, report.failures
    return dict(report.extras)


def test_snapshot_in_the_middle_then_restore_finishes_with_the_right_result(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    vm = start(tmp_path, disk)
    vm.wait_for(b"progress: 3/")
    snap = tmp_path / "mid.snap"
    answer = vm.snapshot_and_kill(snap)
    assert answer["info"]["kind"] == "full" and snap.stat().st_size > 64 << 20
    # the computation was not done when the VMM died
    assert b"RESULT" not in disk.read_bytes()[:512]
    paused_s = 2.0
    time.sleep(paused_s)
    t0 = time.monotonic()
    restored = Vmm(tmp_path, ["--restore", str(snap)], "b")
    status, text = restored.finish()
    extras = check_finished(status, vm.out.decode() + text, disk)
    assert time.monotonic() - t0 < 60
    # the clock: TSC and kvmclock go on from where they were saved (the seconds on disk do not
    # pass for the guest): no round-to-round step beyond a round's own time plus the pause
    assert int(extras["max_step_ms"]) < 1000 * paused_s + 2000, extras
    assert int(extras["max_kvmclock_step_ms"]) < 1000 * paused_s + 2000, extras
    stats = json.loads(restored.stats.read_text())
    assert "vm_restored" in stats["timings_ms"] and "first_kvm_run" in stats["timings_ms"]


def test_snapshot_restore_snapshot_restore_with_a_diff(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    vm = start(tmp_path, disk)
    vm.wait_for(b"progress: 2/")
    first = tmp_path / "one.snap"
    vm.snapshot_and_kill(first)
    second_vm = Vmm(tmp_path, ["--restore", str(first), "--memory-backing", "private-mmap"], "b")
    second_vm.wait_for(b"progress: 5/")
    second = tmp_path / "two.snap"
    answer = second_vm.snapshot_and_kill(second, memory="diff")
    info = answer["info"]
    assert info["kind"] == "diff" and info["base"] == str(first)
    # a diff holds only what changed: a few pages, not 64 MiB
    assert 0 < info["pages"] < 2048 and second.stat().st_size < 16 << 20
    third = Vmm(tmp_path, ["--restore", str(second)], "c")
    status, text = third.finish()
    check_finished(status, vm.out.decode() + second_vm.out.decode() + text, disk)


@pytest.mark.parametrize("damage", ["flip-state", "flip-memory", "truncate", "foreign", "missing-base"])
def test_a_damaged_snapshot_is_refused_with_one_line_and_status_2(tmp_path: Path, damage: str) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    vm = start(tmp_path, disk)
    vm.wait_for(b"progress: 1/")
    snap = tmp_path / "s.snap"
    vm.snapshot_and_kill(snap)
    target = snap
    if damage == "missing-base":
        later = Vmm(tmp_path, ["--restore", str(snap)], "b")
        later.wait_for(b"progress: 2/")
        target = tmp_path / "d.snap"
        later.snapshot_and_kill(target, memory="diff")
        snap.unlink()
    else:
        raw = bytearray(snap.read_bytes())
        if damage == "flip-state":
            raw[4096 + 100] ^= 0xFF  # the state section starts on the second page
        elif damage == "flip-memory":
            at = next(i for i in range(len(raw) - 4096, 8192, -4096) if any(raw[i : i + 4096]))
            raw[at + 7] ^= 0x01
        elif damage == "truncate":
            del raw[len(raw) // 2 :]
        elif damage == "foreign":
            raw = bytearray(b"\x7fELF" + os.urandom(8188))
        snap.write_bytes(bytes(raw))
    proc = subprocess.run(vmm_argv(["--restore", str(target)]), capture_output=True, timeout=60)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2, proc.stderr.decode()
    assert len(lines) == 1 and lines[0].startswith("vnix-vmm: error: "), lines
    print(damage, lines[0])
