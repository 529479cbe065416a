"""Many hosts on PostgreSQL: 3 agents in 3 network namespaces, a manager on a throwaway
PostgreSQL, an XML cluster of 6 tiny VMs (QEMU TCG) spread over the hosts, VMs on different
hosts talking over VXLAN (checked from inside a guest, on its console, with busybox ping), then
one agent killed: its host shows down and nothing else is lost.

Slow: six Linux guests boot under TCG on a 2-core machine (about 2-3 minutes in all).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vnix.cluster.auth import SYSTEM, Actor, Role
from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.ops_admin import RegisterHost
from vnix.cluster.store import Store
from vnix.cluster.tables import Cluster, Host, Vm
from vnix.cluster.vcluster import records
from vnix.cluster.vcluster.ops import CreateCluster, DeleteCluster
from vnix.cluster.vcluster.testlab import HostLab, Postgres, pg_bindir
from vnix.node import models as agent

TINY = Path(os.environ.get("VNIX_HOME", Path.home() / ".local/share/vnix")) / "images" / "tiny"
pytestmark = [
    pytest.mark.slow, pytest.mark.root, pytest.mark.qemu,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and bridges"),
    pytest.mark.skipif(pg_bindir() is None, reason="needs PostgreSQL (apt-get install postgresql)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(not TINY.exists(), reason="needs the tiny image (vnix image build tiny)"),
]
TOKEN = "multihost-agent-token"
ADMIN = Actor("admin", Role.ADMIN)
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
    def __init__(self, lab: HostLab, manager: Manager) -> None:
        self.lab, self.m = lab, manager
        self.calls = 0

    def vms(self) -> dict[str, Vm]:
        with self.m.store.session() as s:
            return {v.name: v for v in s.query(Vm)}

    def console(self, vm: Vm) -> list[str]:
        out: agent.ConsoleOut = self.m.agent(vm.host or "").call(
            "console", params={"lines": 400}, name=vm.name)
        return out.lines

    def type(self, vm: Vm, text: str) -> None:
        self.m.agent(vm.host or "").call("console_write", agent.ConsoleIn(text=text),
                                         name=vm.name)

    def run(self, vm: Vm, command: str, marker: str, timeout: float = 60) -> list[str]:
        """Type ``command; echo <marker>=$?`` on the console; the lines up to the marker line
        (``<marker>=<status>``). Markers are made unique per call; quotes keep the echoed
        command line from matching."""
        self.calls += 1
        unique = f"{marker}{self.calls}"
        self.type(vm, f"{command}; echo {unique[:2]}''{unique[2:]}=$?\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.console(vm)
            for i, line in enumerate(lines):
                if line.startswith(f"{unique}="):
                    return [*lines[:i], f"{marker}={line.split('=', 1)[1]}"]
            time.sleep(1)
        raise AssertionError(f"{vm.name}: no {unique} after {timeout} s: {lines[-15:]}")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Postgres() as pg, HostLab(3, subnet="198.19.200") as lab:
        for h in lab.hosts:
            url = lab.start_agent(h.index, tmp_path / f"agent{h.index}", TOKEN)
            r = httpx.post(f"{url}/images", json={"name": "tiny", "tiny": True},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
            assert r.status_code == 201, r.text
        m = Manager(Store(pg.url), ManagerConfig(monitor=True, monitor_interval_s=1.0,
                                                 down_after=2, workers=4))
        m.ensure_admin("admin-password")
        for h in lab.hosts:
            m.submit(RegisterHost(name=f"host{h.index}", url=f"http://{h.address}:8470",
                                  token=TOKEN), SYSTEM)
        m.start()
        try:
            yield Rig(lab, m)
        finally:
            m.stop()
            m.store.close()


def test_a_cluster_over_three_hosts_on_postgresql(rig: Rig) -> None:
    m = rig.m
    t0 = time.monotonic()
    job = m.runner.wait(m.submit(CreateCluster(xml=CLUSTER, filename="mh.xml"), ADMIN), 300)
    deploy_s = time.monotonic() - t0
    assert job.state == "succeeded", (job.error, job.log)
    vms = rig.vms()
    assert len(vms) == 6 and all(v.actual == "running" for v in vms.values())
    by_host: dict[str, list[Vm]] = {}
    for v in sorted(vms.values(), key=lambda v: v.name):
        by_host.setdefault(v.host or "", []).append(v)
    assert sorted(len(x) for x in by_host.values()) == [2, 2, 2]  # spread: two per host

    # every guest reaches its shell; give each its address (from the store) on its console
    boot0 = time.monotonic()
    for v in vms.values():
        deadline = time.monotonic() + 240
        while not any("vnix-guest: ready" in ln for ln in rig.console(v)):
            assert time.monotonic() < deadline, f"{v.name} did not boot: {rig.console(v)[-10:]}"
            time.sleep(2)
    boot_s = time.monotonic() - boot0
    for v in vms.values():
        ip = records.node_ips(v)[0]
        rig.run(v, f"ip addr add {ip} dev eth0 && ip link set eth0 up", "ADDR")
    # from a guest on host0: ping one guest on each other host (VXLAN between the bridges)
    hosts = sorted(by_host)
    src = by_host[hosts[0]][0]
    for other in hosts[1:]:
        dst = by_host[other][0]
        ip = records.node_ips(dst)[0].split("/")[0]
        lines = rig.run(src, f"ping -c 3 -W 3 {ip}", "PING", timeout=90)
        assert lines[-1] == "PING=0", (src.name, dst.name, lines[-12:])
        assert any("bytes from " + ip in ln for ln in lines), lines[-12:]

    # one agent dies: its host is down, its VMs are unknown (not deleted), the rest runs on
    dead = hosts[2]
    rig.lab.kill(int(dead.removeprefix("host")))
    deadline = time.monotonic() + 30
    while True:
        with m.store.session() as s:
            host = s.get(Host, dead)
            if host is not None and host.state == "down":
                break
        assert time.monotonic() < deadline, "the killed agent's host never showed down"
        time.sleep(0.5)
    time.sleep(2.5)  # another poll or two
    after = rig.vms()
    assert sorted(after) == sorted(vms)  # nothing lost from the store
    for name, v in after.items():
        if v.host == dead:
            assert (v.desired, v.actual) == ("running", "unknown"), (name, v.actual)
        else:
            assert v.actual == "running", (name, v.actual)
    with m.store.session() as s:
        row = s.get(Cluster, "mh")
        assert row is not None and {g.name: g.count for g in row.groups} == {"node": 6}
        assert {h.name: h.state for h in s.query(Host)} == {
            hosts[0]: "up", hosts[1]: "up", dead: "down"}
    # guests on the living hosts still talk
    dst = by_host[hosts[1]][1]
    ip = records.node_ips(dst)[0].split("/")[0]
    assert rig.run(src, f"ping -c 2 -W 3 {ip}", "PONG", timeout=60)[-1] == "PONG=0"
    print(f"\nmultihost: deploy {deploy_s:.1f} s, all 6 booted {boot_s:.1f} s later, "
          f"whole test {time.monotonic() - t0:.1f} s")

    # deleting the cluster while a host is down keeps that host's nodes for later
    j = m.runner.wait(m.submit(DeleteCluster(name="mh"), ADMIN), 120)
    assert j.state == "failed" and "wait for their host to come back" in j.error
    left = rig.vms()
    assert sorted(left) == sorted(n for n, v in vms.items() if v.host == dead)
