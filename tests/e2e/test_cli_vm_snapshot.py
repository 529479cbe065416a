"""`vnix snapshot create|list|delete` and `vnix vm create NAME --snapshot GOLD` as a user runs
them: a manager and an agent (native and fake drivers) as processes, the test kit's idle guest
as the image, a golden snapshot made through the manager; the VM is a clone, and every bad
request is one line with status 2."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_manager import JOIN, Cli, free_port  # noqa: E402

from vnix.testkit.runner import TESTKIT_DIR, build  # noqa: E402

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]
GUEST = TESTKIT_DIR / "build" / "idle.elf"
AGENT_TOKEN = "agent-t"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Cli, httpx.Client, Path]]:
    if not GUEST.is_file():
        build()
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"vnx-e2e-{os.getpid()}"  # short: sockets
    c = Cli(tmp_path / "home")
    mport, aport = free_port(), free_port()
    url = f"http://127.0.0.1:{mport}"
    log = open(tmp_path / "procs.log", "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "vnix", "manager", "--listen",
                               f"127.0.0.1:{mport}", "--join-token", JOIN, "--interval", "0.5"],
                              env=c.env, stdout=log, stderr=log)]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "vnix", "agent", "--listen", f"127.0.0.1:{aport}", "--token",
         AGENT_TOKEN, "--data-dir", str(root), "--driver", "fake", "--drivers", "fake,native",
         "--join", url, "--join-token", JOIN, "--name", "n1"], env=c.env, stdout=log,
        stderr=log))
    agent = httpx.Client(base_url=f"http://127.0.0.1:{aport}", timeout=120,
                         headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    try:
        deadline = time.monotonic() + 60
        while c.run("login", url, "--password", "admin-pass-1").returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "procs.log").read_text()
            time.sleep(0.3)
        while not any(h["name"] == "n1" and h["state"] == "up" for h in c.json("node", "list")):
            assert time.monotonic() < deadline, (tmp_path / "procs.log").read_text()
            time.sleep(0.3)
        yield c, agent, tmp_path
    finally:
        for vm in agent.get("/vms").json() if procs[1].poll() is None else []:
            agent.delete(f"/vms/{vm['name']}")
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        agent.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_vm_create_from_a_snapshot(lab: tuple[Cli, httpx.Client, Path]) -> None:
    c, agent, _ = lab
    c.ok("image", "import", "idle", "--kernel", str(GUEST))
    assert "no snapshot 'gold' on any host (known: none)" in c.fails(
        2, "vm", "create", "s1", "--snapshot", "gold")
    assert "(no golden snapshots)" in c.run("snapshot", "list").stderr
    for args, text in [
        (("gold", "--image", "nope"), "no image 'nope' on any host (known: idle)"),
        (("Gold!", "--image", "idle"), "name: String should match pattern"),
        (("gold", "--image", "idle", "--memory", "1M"), "memory 1M is too small"),
        (("gold", "--image", "idle", "--host", "n2"), "no host 'n2'"),
        (("gold", "--image", "idle", "--memory", "1T"),
         "no host can make snapshot 'gold' (1048576 MiB, 1 vCPU): n1 has"),
    ]:
        assert text in c.fails(2, "snapshot", "create", *args), args
    out = c.ok("snapshot", "create", "gold", "--image", "idle", "--memory", "32M", "--no-vsock")
    assert "gold: made on n1" in out and "snapshot gold of idle in" in out, out
    assert "snapshot 'gold' exists already on n1 (image idle, 32 MiB, 1 vCPU)" in c.fails(
        2, "snapshot", "create", "gold", "--image", "idle")
    listed = c.json("snapshot", "list")
    assert listed["unanswered"] == []
    (g,) = listed["snapshots"]
    assert (g["host"], g["name"], g["image"], g["memory_mib"], g["cpus"], g["clones"]) == (
        "n1", "gold", "idle", 32, 1, 0)
    assert g["size"] > 0
    table = c.ok("snapshot", "list")
    assert "gold" in table and "n1" in table and "idle" in table and "32M" in table, table
    assert agent.get("/snapshots/gold").json()["memory_mib"] == 32  # made on the agent

    out = c.ok("vm", "create", "s1", "--snapshot", "gold")
    assert "s1: created on n1" in out
    vm = next(v for v in c.json("vm", "list") if v["name"] == "s1")
    assert (vm["actual"], vm["image"], vm["memory_mib"], vm["cpus"]) == ("running", "idle",
                                                                        32, 1)
    info = agent.get("/vms/s1").json()
    assert info["driver"] == "native" and "cloned from golden.snap" in info["detail"]
    # the snapshot's own values may be given
    assert "s2: created on n1" in c.ok("vm", "create", "s2", "--snapshot", "gold", "--image",
                                       "idle", "--memory", "32M")
    assert sorted(agent.get("/snapshots/gold").json()["used_by"]) == ["s1", "s2"]
    (g,) = c.json("snapshot", "list")["snapshots"]
    assert (g["clones"], g["used_by"]) == (2, ["s1", "s2"])
    assert "s1,s2" in c.ok("snapshot", "list")

    for args, text in [
        (("--snapshot", "nope"), "no snapshot 'nope' on any host (known: gold)"),
        (("--snapshot", "Gold!"), "snapshot: String should match pattern"),
        (("--snapshot", "gold", "--memory", "64M"),
         "a clone of snapshot 'gold' has its 32 MiB of memory, not 64M: leave 'memory' out"),
        (("--snapshot", "gold", "--image", "tiny"), "snapshot 'gold' is not of image 'tiny'"),
        (("--snapshot", "gold", "--driver", "fake"),
         "snapshot 'gold' makes clones on the native driver, not 'fake'"),
        (("--snapshot", "gold", "--cmdline", "quiet"), "leave 'cmdline' out"),
        (("--snapshot", "gold", "--host", "n2"), "there is no host 'n2'"),
    ]:
        assert text in c.fails(2, "vm", "create", "x", *args), args
    assert not any(v["name"] == "x" for v in c.json("vm", "list"))
    # a VM without a snapshot still gets the old defaults (tiny is not here: 404)
    assert "no image 'tiny'" in c.fails(2, "vm", "create", "x")
    assert "x: created on n1" in c.ok("vm", "create", "x", "--image", "idle", "--memory", "64M",
                                      "--driver", "fake")
    # deleting the snapshot is refused while its clones exist, accepted afterwards
    assert "snapshot 'gold' is used by VM(s) s1, s2 on n1: delete those VMs first" in c.fails(
        2, "snapshot", "delete", "gold")
    c.ok("vm", "delete", "s1", "s2", "x")
    assert "no host 'n2'" in c.fails(2, "snapshot", "delete", "gold", "--host", "n2")
    assert "bad snapshot name 'Gold!'" in c.fails(2, "snapshot", "delete", "Gold!")
    assert "snapshot gold deleted" in c.ok("snapshot", "delete", "gold")
    assert agent.get("/snapshots/gold").status_code == 404
    assert c.json("snapshot", "list") == {"snapshots": [], "unanswered": []}
    assert "no snapshot 'gold' on any host (known: none)" in c.fails(2, "snapshot", "delete",
                                                                    "gold")
