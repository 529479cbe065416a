"""The manager's CLI as a user runs it: `vnix manager`, `vnix agent --join`, login, nodes,
images, a batch of VMs, roles, jobs, one-line errors with status 2 (fake driver: fast)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.cluster.testing import image_files

JOIN = "join-secret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "VNIX_HOME": str(home), "VNIX_ADMIN_PASSWORD": "admin-pass-1"}
        self.env.pop("VNIX_URL", None)
        self.env.pop("VNIX_TOKEN", None)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vnix", *args], capture_output=True,
                              text=True, env={**self.env, **(env or {})}, timeout=120)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        r = self.run(*args, env=env)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, status: int, *args: str) -> str:
        r = self.run(*args)
        assert r.returncode == status, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr.strip()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[tuple[Cli, str, Path]]:
    c = Cli(tmp_path / "home")
    mport, aport = free_port(), free_port()
    url = f"http://127.0.0.1:{mport}"
    log = open(tmp_path / "procs.log", "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "vnix", "manager", "--listen",
                               f"127.0.0.1:{mport}", "--join-token", JOIN, "--interval", "0.5"],
                              env=c.env, stdout=log, stderr=log)]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "vnix", "agent", "--listen", f"127.0.0.1:{aport}", "--token",
         "agent-t", "--data-dir", str(tmp_path / "agent"), "--driver", "fake", "--join", url,
         "--join-token", JOIN, "--name", "n1"], env=c.env, stdout=log, stderr=log))
    try:
        yield c, url, tmp_path
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


def test_manager_agent_join_and_a_batch_of_vms(cli: tuple[Cli, str, Path]) -> None:
    c, url, tmp = cli
    assert "no manager configured" in c.fails(2, "vm", "list")
    deadline = time.monotonic() + 60
    while c.run("login", url, "--password", "admin-pass-1").returncode != 0:
        assert time.monotonic() < deadline, (tmp / "procs.log").read_text()
        time.sleep(0.3)
    assert "wrong user name or password" in c.fails(2, "login", url, "--password", "nope")
    c.ok("login", url, "--password", "admin-pass-1")
    while not any(h["name"] == "n1" and h["state"] == "up" for h in c.json("node", "list")):
        assert time.monotonic() < deadline, (tmp / "procs.log").read_text()
        time.sleep(0.3)
    kernel, initrd = image_files(tmp / "files")
    c.ok("image", "import", "linux", "--kernel", str(kernel), "--initrd", str(initrd))
    assert [(i["name"], i["hosts"]) for i in c.json("image", "list")] == [("linux", ["n1"])]

    job = c.json("vm", "create", "w", "--count", "3", "--image", "linux", "--memory", "64M")
    assert job["state"] == "succeeded" and job["progress"] == 1.0
    assert sorted(job["result"]["vms"]) == ["w-1", "w-2", "w-3"]
    vms = c.json("vm", "list")
    assert [(v["name"], v["actual"], v["host"]) for v in vms] == [
        ("w-1", "running", "n1"), ("w-2", "running", "n1"), ("w-3", "running", "n1")]
    table = c.ok("vm", "list")
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "HOST"]
    assert "w-2   running" in table
    assert "w-1: pause succeeded" in c.ok("vm", "pause", "w-1")
    assert "cannot pause VM 'w-1': it is paused, needs running" in c.fails(2, "vm", "pause",
                                                                          "w-1")
    assert "fake: booting w-2" in c.ok("vm", "console", "w-2")
    assert "cannot read memory size 'lots'" in c.fails(2, "vm", "create", "x", "--memory",
                                                       "lots")
    assert "no image 'debian'" in c.fails(2, "vm", "create", "x", "--image", "debian")
    assert "no VM 'nope'" in c.fails(2, "vm", "start", "nope")

    c.ok("user", "create", "bob", "--password", "bob-password", "--max-vms", "1")
    c.ok("user", "create", "gus", "--password", "gus-password", "--role", "guest")
    assert "VMs     0 of 1" in c.ok("user", "quota", "bob")
    bob_home = {"VNIX_HOME": str(tmp / "bob")}
    c.ok("login", url, "--user", "bob", "--password", "bob-password", env=bob_home)
    r = c.run("vm", "delete", "w-1", env=bob_home)
    assert r.returncode == 2 and "no VM 'w-1'" in r.stderr
    assert "b-1: created on n1" in c.ok("vm", "create", "b-1", "--image", "linux",
                                        env=bob_home)
    r = c.run("vm", "create", "b-2", "--image", "linux", env=bob_home)
    assert r.returncode == 2 and "quota exceeded: bob may have 1 VMs" in r.stderr
    gus_home = {"VNIX_HOME": str(tmp / "gus")}
    c.ok("login", url, "--user", "gus", "--password", "gus-password", env=gus_home)
    assert "b-1" in c.ok("vm", "list", env=gus_home)
    r = c.run("vm", "stop", "b-1", env=gus_home)
    assert r.returncode == 2 and "guest 'gus' may not do this" in r.stderr

    jobs = c.json("job", "list")
    assert {"create_vms", "pause_vm", "create_user", "import_image", "register_host"} <= {
        j["kind"] for j in jobs}
    assert "w-1: ok" in c.ok("job", "show", str(next(j["id"] for j in jobs
                                                     if j["kind"] == "create_vms")))
    assert "has already succeeded" in c.fails(2, "job", "cancel", str(jobs[0]["id"]))
    c.ok("vm", "delete", "w-1", "w-2", "w-3", "b-1")
    assert c.json("vm", "list") == []
