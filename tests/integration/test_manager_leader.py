"""Two `vnix manager` processes on one PostgreSQL: both serve the API, only the leader (the
holder of the advisory lock) runs jobs; when it dies the other takes over and runs the job
that was waiting. The VMs are the fake driver's, on a `vnix agent --join`ed host.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vnix.cluster.vcluster.testlab import Postgres, free_port, pg_bindir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run PostgreSQL as postgres"),
    pytest.mark.skipif(pg_bindir() is None, reason="needs PostgreSQL (apt-get install postgresql)"),
]
JOIN = "leader-test-join-token"
PASSWORD = "leader-test-password"


class Proc:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.p = subprocess.Popen([sys.executable, "-m", "vnix", *argv],
                                  stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                  env={**os.environ, "VNIX_ADMIN_PASSWORD": PASSWORD})

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, what: str, timeout: float = 30) -> float:
        t0 = time.monotonic()
        while what not in self.text():
            assert self.p.poll() is None, self.text()
            assert time.monotonic() - t0 < timeout, f"no {what!r} in: {self.text()}"
            time.sleep(0.1)
        return time.monotonic() - t0

    def end(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)


def start_manager(url: str, port: int, log: Path) -> tuple[Proc, httpx.Client]:
    proc = Proc(["manager", "--db", url, "--listen", f"127.0.0.1:{port}", "--join-token",
                 JOIN, "--interval", "1"], log)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            r = api.post("/login", json={"name": "admin", "password": PASSWORD})
            if r.status_code == 200:
                api.headers["Authorization"] = f"Bearer {r.json()['token']}"
                return proc, api
        except httpx.TransportError:
            pass
        assert proc.p.poll() is None and time.monotonic() < deadline, proc.text()
        time.sleep(0.2)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    made: list[Proc] = []
    yield made
    for p in reversed(made):
        p.end()


def job_state(api: httpx.Client, job_id: int, timeout: float) -> dict[str, object]:
    r = api.get(f"/jobs/{job_id}/wait", params={"timeout": timeout})
    assert r.status_code == 200, r.text
    job: dict[str, object] = r.json()
    return job


def test_the_standby_takes_over_and_runs_the_queued_job(tmp_path: Path,
                                                        procs: list[Proc]) -> None:
    with Postgres() as pg:
        m1, api1 = start_manager(pg.url, free_port(), tmp_path / "m1.log")
        procs.append(m1)
        m1.wait_for("leader: this manager holds the lock")
        m2, api2 = start_manager(pg.url, free_port(), tmp_path / "m2.log")
        procs.append(m2)

        # a host with the fake driver joins through the first manager
        kernel = tmp_path / "k"
        kernel.write_bytes(b"\x7fELF" + b"\0" * 64)
        aport = free_port()
        agent = Proc(["agent", "--listen", f"127.0.0.1:{aport}", "--token", "agent-t",
                      "--data-dir", str(tmp_path / "agent"), "--driver", "fake", "--join",
                      str(api1.base_url).removesuffix("/api/v1/").removesuffix("/api/v1"),
                      "--join-token", JOIN, "--name", "h1"], tmp_path / "agent.log")
        procs.append(agent)
        agent.wait_for("joined")
        r = httpx.post(f"http://127.0.0.1:{aport}/images", json={"name": "k", "kernel": str(kernel)},
                       headers={"Authorization": "Bearer agent-t"})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 20  # the leader's monitor sees the image
        while not any(i["name"] == "k" for i in api2.get("/images").json()):
            assert time.monotonic() < deadline, api2.get("/images").text
            time.sleep(0.5)

        # both serve; a job submitted to the standby is run by the leader
        assert "leader:" not in m2.text()
        r = api2.post("/vms", json={"name": "v1", "image": "k", "memory": "64M"})
        assert r.status_code == 202, r.text
        assert job_state(api2, r.json()["id"], 30)["state"] == "succeeded"

        # the leader frozen: it keeps the lock, so the standby runs nothing
        os.kill(m1.p.pid, signal.SIGSTOP)
        r = api2.post("/vms", json={"name": "v2", "image": "k", "memory": "64M"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert job_state(api2, job_id, 4)["state"] == "queued"
        assert "leader:" not in m2.text()

        # the leader dies: its session ends, the standby takes the lock and the queued job
        t0 = time.monotonic()
        m1.end()
        took_over = m2.wait_for("leader: this manager holds the lock", 15)
        job = job_state(api2, job_id, 30)
        done = time.monotonic() - t0
        assert job["state"] == "succeeded", job
        vms = {v["name"]: v for v in api2.get("/vms").json()}
        assert set(vms) == {"v1", "v2"} and vms["v2"]["host"] == "h1", vms
        print(f"\nleader killed: standby leader after {took_over:.1f} s, "
              f"queued job done {done:.1f} s after the kill")
        assert done < 10
