"""Many hosts on PostgreSQL, deployed the way a user does it: a throwaway PostgreSQL,
``vnix manager --db postgresql+psycopg://...`` as a process, ``vnix agent --join URL
--join-token J`` in each of 3 network namespaces, then the CLI: ``vnix login``, ``vnix image
import tiny``, ``vnix cluster create mh.xml`` (6 tiny VMs, QEMU TCG, spread over the hosts),
``vnix cluster wait --console``.

Each guest's /init configures its address from the ``vnix.ip=`` the deploy gave it (nothing
typed); the test reads the address from inside the guests, pings between guests on different
hosts (VXLAN), then kills one agent: its host shows down and nothing else is lost.

Slow: six Linux guests boot under TCG on a 2-core machine (about a minute in all).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vnix.cluster.vcluster.testlab import HostLab, Postgres, free_port, pg_bindir
from vnix.images.guest_init import ADDRESS_PREFIX

TINY = Path(os.environ.get("VNIX_HOME", Path.home() / ".local/share/vnix")) / "images" / "tiny"
pytestmark = [
    pytest.mark.slow, pytest.mark.root, pytest.mark.qemu,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and bridges"),
    pytest.mark.skipif(pg_bindir() is None, reason="needs PostgreSQL (apt-get install postgresql)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(not TINY.exists(), reason="needs the tiny image (vnix image build tiny)"),
]
AGENT_TOKEN = "multihost-agent-token"
JOIN_TOKEN = "multihost-join-token"
PASSWORD = "multihost-admin-password"
CLUSTER = """<?xml version="1.0"?>
<cluster name="mh">
  <network name="fabric" subnet="198.19.80.0/24" dhcp="false"/>
  <group name="node" count="6" image="tiny" cpus="1" memory="128M" driver="qemu"
         network="fabric">
    <placement policy="spread"/>
  </group>
</cluster>
"""


class Rig:
    """The manager's URL, a CLI environment logged in to it, and the API for consoles."""

    def __init__(self, lab: HostLab, url: str, env: dict[str, str], work: Path) -> None:
        self.lab, self.url, self.env, self.work = lab, url, env, work
        self.calls = 0
        self.api = httpx.Client(base_url=f"{url}/api/v1", timeout=60)

    def vnix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "vnix", *args], env=self.env, text=True,
                           capture_output=True, timeout=600)
        assert r.returncode == 0 or not check, (args, r.stdout[-2000:], r.stderr[-2000:])
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self.vnix(*args, "--json").stdout)

    def login(self) -> None:
        self.vnix("login", self.url, "--password", PASSWORD)
        token = json.loads((Path(self.env["VNIX_HOME"]) / "client.json").read_text())["token"]
        self.api.headers["Authorization"] = f"Bearer {token}"

    def console(self, vm: str) -> list[str]:
        r = self.api.get(f"/vms/{vm}/console", params={"lines": 400})
        assert r.status_code == 200, r.text
        lines: list[str] = r.json()["lines"]
        return lines

    def run(self, vm: str, command: str, marker: str, timeout: float = 60) -> list[str]:
        """Type ``command; echo <marker>=$?`` on the console (through the manager); the lines
        up to the marker line. Markers are unique per call; quotes keep the echoed command
        line from matching."""
        self.calls += 1
        unique = f"{marker}{self.calls}"
        r = self.api.post(f"/vms/{vm}/console",
                          json={"text": f"{command}; echo {unique[:2]}''{unique[2:]}=$?\n"})
        assert r.status_code == 204, r.text
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = self.console(vm)
            for i, line in enumerate(lines):
                if line.startswith(f"{unique}="):
                    return [*lines[:i], f"{marker}={line.split('=', 1)[1]}"]
            time.sleep(1)
        raise AssertionError(f"{vm}: no {unique} after {timeout} s: {lines[-15:]}")


def _wait_http(url: str, log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    env = {**os.environ, "VNIX_HOME": str(tmp_path / "cli"), "VNIX_ADMIN_PASSWORD": PASSWORD}
    for key in ("VNIX_URL", "VNIX_TOKEN", "VNIX_JOIN_TOKEN", "VNIX_DB"):
        env.pop(key, None)
    with Postgres() as pg, HostLab(3, subnet="198.19.200") as lab:
        port = free_port(lab.gateway)
        url = f"http://{lab.gateway}:{port}"
        mlog = tmp_path / "manager.log"
        manager = subprocess.Popen(
            [sys.executable, "-m", "vnix", "manager", "--db", pg.url, "--listen",
             f"{lab.gateway}:{port}", "--join-token", JOIN_TOKEN, "--interval", "1"],
            stdout=open(mlog, "ab"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
        try:
            _wait_http(f"{url}/api/openapi.json", mlog, manager)
            for h in lab.hosts:
                lab.spawn(h.index, [
                    sys.executable, "-m", "vnix", "agent", "--listen", f"{h.address}:8470",
                    "--token", AGENT_TOKEN, "--data-dir", str(tmp_path / f"agent{h.index}"),
                    "--driver", "qemu", "--join", url, "--join-token", JOIN_TOKEN,
                    "--name", f"host{h.index}"], log_file=tmp_path / f"agent{h.index}.log")
            yield Rig(lab, url, env, tmp_path)
        finally:
            manager.terminate()
            try:
                manager.wait(10)
            except subprocess.TimeoutExpired:
                manager.kill()
                manager.wait()


def test_a_cluster_over_three_hosts_on_postgresql(rig: Rig) -> None:
    t0 = time.monotonic()
    rig.login()
    deadline = time.monotonic() + 60
    while len([h for h in rig.json("node", "list") if h["state"] == "up"]) < 3:
        assert time.monotonic() < deadline, rig.vnix("node", "list").stdout
        time.sleep(0.5)
    imported = rig.json("image", "import", "tiny")
    assert imported["state"] == "succeeded", imported
    assert sorted(imported["result"]["hosts"]) == ["host0", "host1", "host2"]

    (rig.work / "mh.xml").write_text(CLUSTER)
    t1 = time.monotonic()
    job = rig.json("cluster", "create", str(rig.work / "mh.xml"))
    deploy_s = time.monotonic() - t1
    assert job["state"] == "succeeded", (job["error"], job.get("log"))
    nodes = {n["name"]: n for n in rig.json("cluster", "show", "mh")["node_list"]}
    assert len(nodes) == 6 and all(n["actual"] == "running" for n in nodes.values())
    by_host: dict[str, list[str]] = {}
    for name in sorted(nodes):
        by_host.setdefault(nodes[name]["host"], []).append(name)
    assert sorted(len(x) for x in by_host.values()) == [2, 2, 2]  # spread: two per host

    # every guest boots to its shell with the address the deploy gave it (vnix.ip=)
    t2 = time.monotonic()
    ready = rig.json("cluster", "wait", "mh", "--console", "--timeout", "240")
    boot_s = time.monotonic() - t2
    assert len(ready) == 6
    for name, n in nodes.items():
        assert len(n["ips"]) == 1 and n["ips"][0].startswith("198.19.80."), n
        lines = rig.console(name)
        assert f"{ADDRESS_PREFIX}{n['ips'][0]}" in lines, (name, lines[-10:])
        out = rig.run(name, "ip -4 -o addr show dev eth0; hostname", "ADDR")
        assert out[-1] == "ADDR=0", out[-8:]
        assert any(f"inet {n['ips'][0]}" in ln for ln in out), (name, out[-8:])
        assert name in out[-2], out[-8:]

    # from a guest on host0: ping one guest on each other host (VXLAN between the bridges)
    hosts = sorted(by_host)
    src = by_host[hosts[0]][0]
    for other in hosts[1:]:
        dst = by_host[other][0]
        ip = nodes[dst]["ips"][0].split("/")[0]
        lines = rig.run(src, f"ping -c 3 -W 3 {ip}", "PING", timeout=90)
        assert lines[-1] == "PING=0", (src, dst, lines[-12:])
        assert any("bytes from " + ip in ln for ln in lines), lines[-12:]

    # one agent dies: its host is down, its VMs are unknown (not deleted), the rest runs on
    dead = hosts[2]
    rig.lab.kill(int(dead.removeprefix("host")))
    deadline = time.monotonic() + 30
    while {h["name"]: h["state"] for h in rig.json("node", "list")}[dead] != "down":
        assert time.monotonic() < deadline, "the killed agent's host never showed down"
        time.sleep(0.5)
    time.sleep(2.5)  # another poll or two
    after = {v["name"]: v for v in rig.json("vm", "list")}
    assert sorted(after) == sorted(nodes)  # nothing lost from the store
    for name, v in after.items():
        if v["host"] == dead:
            assert (v["desired"], v["actual"]) == ("running", "unknown"), (name, v)
        else:
            assert v["actual"] == "running", (name, v)
    cluster = rig.json("cluster", "show", "mh")
    assert {g["name"]: g["count"] for g in cluster["groups"]} == {"node": 6}
    assert {h["name"]: h["state"] for h in rig.json("node", "list")} == {
        hosts[0]: "up", hosts[1]: "up", dead: "down"}
    # guests on the living hosts still talk
    ip = nodes[by_host[hosts[1]][1]]["ips"][0].split("/")[0]
    assert rig.run(src, f"ping -c 2 -W 3 {ip}", "PONG", timeout=60)[-1] == "PONG=0"
    print(f"\nmultihost: deploy {deploy_s:.1f} s, all 6 on their consoles {boot_s:.1f} s "
          f"later, whole test {time.monotonic() - t0:.1f} s")

    # deleting the cluster while a host is down keeps that host's nodes for later
    r = rig.vnix("cluster", "delete", "mh", check=False)
    assert r.returncode != 0 and "wait for their host to come back" in r.stdout + r.stderr
    left = [v["name"] for v in rig.json("vm", "list")]
    assert sorted(left) == sorted(n for n, v in after.items() if v["host"] == dead)
