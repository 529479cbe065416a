"""The VMM's control API against a running VMM process with the test kit's ``idle`` guest (ticks
twice a second on the serial port, echoes lines, powers off on Ctrl-Alt-Del): what a user
checks with curl or ``vnix vmm``."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.testkit.runner import TESTKIT_DIR
from vnix.vmm.api.client import VmmClient, VmmRequestError
from vnix.vmm.launch import vmm_argv

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")]


@pytest.fixture(scope="module")
def idle_elf() -> Path:
    subprocess.run(["make", "-s", "-C", str(TESTKIT_DIR), "build/idle.elf"], check=True, capture_output=True)
    return TESTKIT_DIR / "build" / "idle.elf"


class Vmm:
    def __init__(self, tmp: Path, kernel: Path, cmdline: str = "") -> None:
        self.sock = tmp / "api.sock"
        self.out = tmp / "serial.out"
        self.err = tmp / "vmm.err"
        self.stats = tmp / "stats.json"
        argv = vmm_argv(["--kernel", str(kernel), "--memory", "64M", "--cmdline", cmdline,
                         "--api-sock", str(self.sock), "--stats-json", str(self.stats)])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out.open("wb"),
                                     stderr=self.err.open("wb"))
        self.api = VmmClient(str(self.sock), timeout=10)
        self.wait_output("tick 1")

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"VMM ended ({self.proc.returncode}): {self.err.read_text()}"
            assert time.monotonic() < deadline, f"{text!r} not in {self.output()[-300:]!r}"
            time.sleep(0.05)

    def ticks(self) -> int:
        return sum(1 for ln in self.output().splitlines() if ln.startswith("tick "))

    def raw(self, data: bytes) -> tuple[int, dict[str, object]]:
        """Send bytes as they are; (status, JSON body) of the answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.sock))
            s.sendall(data)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def vmm(tmp_path: Path, idle_elf: Path) -> Iterator[Vmm]:
    v = Vmm(tmp_path, idle_elf)
    yield v
    v.close()


def test_pause_stops_the_guest_and_resume_continues(vmm: Vmm) -> None:
    assert vmm.api.vm()["state"] == "running"
    assert vmm.api.pause() == {"state": "paused"}
    time.sleep(0.3)  # a tick that was being printed lands
    before = vmm.ticks()
    time.sleep(1.5)  # three ticks' time
    assert vmm.ticks() == before, "the guest printed while paused"
    with pytest.raises(VmmRequestError) as exc:
        vmm.api.pause()
    assert exc.value.status == 409 and "paused" in str(exc.value)
    assert vmm.api.resume() == {"state": "running"}
    vmm.wait_output(f"tick {before + 1}", timeout=5)
    with pytest.raises(VmmRequestError) as exc:
        vmm.api.resume()
    assert exc.value.status == 409


def test_stats_show_exits_memory_and_devices(vmm: Vmm) -> None:
    st = vmm.api.stats()
    assert st["exits"]["io_out"] > 10  # every tick line is port writes to COM1
    assert st["io_out_by_port"]["0x3f8"] >= len("tick 1\n")
    assert st["exits_total"] == sum(st["exits"].values())
    mem = st["memory"]
    assert mem["guest_ram_bytes"] == 64 * 2**20
    assert 0 < mem["guest_resident_bytes"] < mem["rss_bytes"]
    assert {"balloon", "rng"} <= set(st["devices"])
    assert "first_kvm_run" in st["timings_ms"]
    vmm.wait_output(f"tick {vmm.ticks() + 1}", timeout=5)
    assert vmm.api.stats()["exits"]["io_out"] > st["exits"]["io_out"]  # the counters are live


def test_graceful_stop_is_ctrl_alt_del_and_the_guest_powers_off(vmm: Vmm) -> None:
    r = vmm.api.stop(graceful=True, timeout=20)
    assert r["method"] == "ctrl-alt-del" and r["delivered"] is True
    assert vmm.proc.wait(10) == 0
    out = vmm.output()
    assert "ctrl-alt-del" in out and "power off" in out
    assert json.loads(vmm.stats.read_text())["exit_reason"] == "guest powered off (ACPI S5)"
    assert not vmm.sock.exists()  # the VMM removes its socket


def test_graceful_stop_of_a_guest_that_ignores_it_is_forced_after_the_timeout(tmp_path: Path, idle_elf: Path) -> None:
    v = Vmm(tmp_path, idle_elf, cmdline="cad=ignore")
    try:
        t = time.monotonic()
        v.api.stop(graceful=True, timeout=1.5)
        assert v.proc.wait(15) == 0
        took = time.monotonic() - t
        assert 1.4 <= took < 10
        assert "ignoring ctrl-alt-del" in v.output()
        assert "did not stop within 1.5 s" in json.loads(v.stats.read_text())["exit_reason"]
    finally:
        v.close()


def test_forced_stop(vmm: Vmm) -> None:
    t = time.monotonic()
    assert vmm.api.stop(graceful=False)["state"] == "stopping"
    assert vmm.proc.wait(10) == 0
    assert time.monotonic() - t < 3
    assert "ctrl-alt-del" not in vmm.output()
    assert json.loads(vmm.stats.read_text())["exit_reason"] == "stopped through the control API"


def test_bad_requests_get_4xx_and_the_vmm_runs_on(vmm: Vmm) -> None:
    def put(path: str, body: bytes) -> tuple[int, dict[str, object]]:
        return vmm.raw(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

    assert put("/vm/stop", b"{not json")[0] == 400
    assert put("/vm/stop", b'{"graceful": "yes"}')[0] == 400
    assert put("/vm/stop", b'{"timeout": -1}')[0] == 400
    assert put("/vm/stop", b"[1, 2]")[0] == 400
    assert put("/balloon", b'{"target_mib": 4096}')[0] == 400
    assert put("/balloon", b'{"target_mib": 8, "extra": 1}')[0] == 400
    assert put("/snapshot", b'{"path": "relative.snap"}')[0] == 400
    assert put("/snapshot", b'{"path": "/nonexistent-dir/x.snap"}')[0] == 400
    status, body = vmm.raw(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404 and "nowhere" in str(body["error"])
    assert vmm.raw(b"DELETE /vm HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 405
    assert put("/vm/resume", b"")[0] == 409  # it runs
    # malformed HTTP
    assert vmm.raw(b"garbage\r\n\r\n")[0] == 400
    assert vmm.raw(b"GET /vm HTTP/9.9\r\n\r\n")[0] == 400
    assert vmm.raw(b"GET /vm HTTP/1.1\r\nno colon here\r\n\r\n")[0] == 400
    assert vmm.raw(b"GET /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n")[0] == 400
    assert vmm.raw(b"PUT /vm/stop HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")[0] == 411
    assert vmm.raw(b"GET /vm HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")[0] == 431
    assert vmm.raw(b"PUT /balloon HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")[0] == 413
    assert vmm.raw(b"\xff\xfe GET\r\n\r\n")[0] == 400
    # a client that connects and says nothing, one that hangs up mid-request: no harm
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(vmm.sock))
        s.sendall(b"GET /vm HTT")
    assert vmm.api.vm()["state"] == "running"
    assert vmm.proc.poll() is None


def test_balloon_target(vmm: Vmm) -> None:
    out = vmm.api.set_balloon(16)
    assert out["target_mib"] == 16
    assert vmm.api.balloon()["target_mib"] == 16
    assert vmm.api.stats()["memory"]["balloon"]["target_mib"] == 16


def test_every_route_in_the_openapi_document_answers(vmm: Vmm) -> None:
    doc = vmm.api.request("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    routes = [(path, method.upper()) for path, ops in doc["paths"].items() for method in ops]
    assert len(routes) == 9
    for path, method in routes:
        if method == "GET":
            status, _ = vmm.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert status == 200, path
        else:  # a body the route must refuse (unknown field) or ignore: never 404/405/5xx
            body = b'{"probe": 1}'
            status, answer = vmm.raw(f"{method} {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert status in (200, 400, 409), (path, status, answer)
            if path == "/vm/pause" and status == 200:
                vmm.api.resume()
    assert vmm.api.vm()["state"] == "running"
