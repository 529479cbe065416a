"""`vnix agent` run as a user runs it, for the integration tests of one driver (qemu, native):
a subprocess on a free port with a data dir, an HTTP client with the token, SIGKILL and restart,
and a fixture body that registers the test guest and leaves no agent or VM process behind."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


class Agent:
    def __init__(self, data_dir: Path, driver: str, token: str) -> None:
        self.data_dir = data_dir
        self.driver, self.token = driver, token
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vnix", "agent", "--listen", f"127.0.0.1:{self.port}",
             "--token", self.token, "--data-dir", str(self.data_dir), "--driver", self.driver],
            stdout=subprocess.DEVNULL, stderr=open(self.data_dir / "agent.err", "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get("/host").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError((self.data_dir / "agent.err").read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def console(self, vm: str) -> list[str]:
        return self.http.get(f"/vms/{vm}/console").json()["lines"]

    def wait_console(self, vm: str, text: str, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = self.console(vm)
            if any(text in ln for ln in lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"{vm}: {text!r} not in {lines}")


def running_agent(tmp_path: Path, driver: str, token: str, kernel: Path) -> Iterator[Agent]:
    """A fixture's body: an agent with the image ``idle`` (``kernel``); afterwards its VMs are
    deleted, the agent ends and any VM process still recorded in the run dir is SIGKILLed."""
    data = tmp_path / "d"
    data.mkdir()
    a = Agent(data, driver, token)
    a.start()
    r = a.http.post("/images", json={"name": "idle", "kernel": str(kernel)})
    assert r.status_code == 201, r.text
    yield a
    for vm in a.http.get("/vms").json() if a.proc and a.proc.poll() is None else []:
        a.http.delete(f"/vms/{vm['name']}")
    if a.proc and a.proc.poll() is None:
        a.proc.terminate()
        a.proc.wait()
    for pidfile in (data / "run" / driver).glob("*/pid"):  # never leave a VM process behind
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
