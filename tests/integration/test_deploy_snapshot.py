"""A virtual cluster deployed from a snapshot (issue 6, fast deployment; issue 4, clones).

A real manager (SQLite) and a real agent (native driver) in this process; the cluster XML has
one group with ``source="snapshot"``. The agent makes the golden snapshot of the test kit's
idle guest on the first clone (a template VM booted to its first tick and saved), and every
node is a clone of it made by the warm clone server. Each node must be a running VM process of
its own that keeps printing ticks on its console; a node stopped and started again through the
manager runs again from the golden state; deleting the cluster leaves no VM process behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from vnix.testkit.runner import TESTKIT_DIR, build

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]

GUEST = TESTKIT_DIR / "build" / "idle.elf"
TOKEN = "snap-test-token"
XML = """<?xml version="1.0"?>
<cluster name="sc">
  <group name="n" count="4" image="idle" cpus="1" memory="32M" driver="native"
         source="snapshot" snapshot="gold"/>
</cluster>
"""


@pytest.fixture
def lab() -> Iterator[dict[str, Any]]:
    import uvicorn

    from vnix.cluster.auth import SYSTEM
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.ops_admin import RegisterHost
    from vnix.cluster.scheduler import Overcommit
    from vnix.cluster.store import Store, sqlite_url
    from vnix.cluster.vcluster.testlab import free_port
    from vnix.node import models as agent
    from vnix.node.app import create_app

    if not GUEST.is_file():
        build()
    tmp = Path(tempfile.mkdtemp(prefix="vnx-ds-", dir="/tmp"))  # short: unix socket paths
    port = free_port()
    app = create_app(tmp / "a", TOKEN, ["native"], "native", reconcile=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    store = Store(sqlite_url(tmp / "m.db"))
    m = Manager(store, ManagerConfig(monitor=False, workers=2,
                                     overcommit=Overcommit(cpu_ratio=16, memory_ratio=1.0)))
    m.ensure_admin("snap-test-admin-password")
    url = f"http://127.0.0.1:{port}"
    m.agent_for("local", url, TOKEN).call(
        "import_image", agent.ImportImage(name="idle", kernel=str(GUEST)))
    m.submit(RegisterHost(name="local", url=url, token=TOKEN), SYSTEM)
    m.start()
    try:
        yield {"manager": m, "store": store, "dir": tmp, "vms": app.state.vms}
    finally:
        vms = app.state.vms
        for name in vms.names():  # whatever a failed test left
            try:
                vms.destroy(name)
            except Exception:
                pass
        m.stop()
        store.close()
        server.should_exit = True
        thread.join(10)
        vms.snapshots.close()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_ticks(client: Any, vm: str, after: int, timeout: float = 10) -> list[str]:
    """The console once it shows a tick numbered above ``after``."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = client.call("console", name=vm).lines
        if any(ln.startswith("tick ") and int(ln.split()[1]) > after for ln in lines
               if ln.split()[1:2] and ln.split()[1].isdigit()):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{vm}: no tick above {after} on its console: {lines}")


def test_cluster_from_snapshot_runs_clones_and_deletes(lab: dict[str, Any]) -> None:
    from vnix.cluster.auth import Actor, Role
    from vnix.cluster.ops_vm import StartVm, StopVm
    from vnix.cluster.tables import Vm
    from vnix.cluster.vcluster.ops import CreateCluster, DeleteCluster, ScaleGroup

    m, store = lab["manager"], lab["store"]
    admin = Actor("admin", Role.ADMIN)
    t0 = time.monotonic()
    job = m.runner.wait(m.submit(CreateCluster(xml=XML), admin), 120)
    took = time.monotonic() - t0
    assert job.state == "succeeded", job.error
    with store.session() as s:
        rows = {v.name: (v.actual, v.host, v.spec.get("snapshot")) for v in s.query(Vm)}
    names = sorted(rows)
    assert names == [f"sc-n-{i}" for i in range(4)]
    assert all(r == ("running", "local", "gold") for r in rows.values()), rows

    client = m.agent("local")
    gold = client.call("snapshot_info", name="gold")
    assert gold.image == "idle" and gold.memory_mib == 32
    assert gold.ready == "tick 1"  # saved after the template's first tick
    assert sorted(gold.used_by) == names
    infos = {n: client.call("vm_info", name=n) for n in names}
    pids = {i.pid for i in infos.values()}
    assert len(pids) == 4 and None not in pids  # a VM process each
    for info in infos.values():
        assert info.state == "running" and info.driver == "native" and info.memory_mib == 32
        assert "cloned from golden.snap" in info.detail
    for n in names:
        # the clone took over the template's guest after its first tick: it counts on
        lines = wait_ticks(client, n, after=2)
        assert "tick 1" not in lines, lines
    # one clone's RAM is the snapshot file's pages, mapped privately (shared until written)
    maps = Path(f"/proc/{infos[names[0]].pid}/maps").read_text()
    assert "golden.snap" in maps
    print(f"4 clones from a snapshot in {took:.2f} s (golden made in "
          f"{gold.boot_s + gold.save_s:.2f} s)")

    # an ordinary VM afterwards: stop and start through the manager
    first = names[0]
    assert m.runner.wait(m.submit(StopVm(name=first, timeout=10), admin), 60).state == "succeeded"
    assert client.call("vm_info", name=first).state == "stopped"
    assert not psutil.pid_exists(infos[first].pid) or \
        psutil.Process(infos[first].pid).status() == psutil.STATUS_ZOMBIE
    assert m.runner.wait(m.submit(StartVm(name=first), admin), 60).state == "succeeded"
    again = client.call("vm_info", name=first)
    assert again.state == "running" and again.pid not in pids
    wait_ticks(client, first, after=2)

    # scaling the group up clones the host's golden snapshot again (not a second one)
    job = m.runner.wait(m.submit(ScaleGroup(cluster="sc", group="n", count=6), admin), 120)
    assert job.state == "succeeded", job.error
    assert sorted(client.call("snapshot_info", name="gold").used_by) == \
        [f"sc-n-{i}" for i in range(6)]
    assert [g.name for g in client.call("list_snapshots")] == ["gold"]
    wait_ticks(client, "sc-n-5", after=2)
    with store.session() as s:
        assert s.query(Vm).filter(Vm.actual == "running").count() == 6
        pids |= {client.call("vm_info", name=v.name).pid for v in s.query(Vm)}

    assert m.runner.wait(m.submit(DeleteCluster(name="sc"), admin), 120).state == "succeeded"
    with store.session() as s:
        assert s.query(Vm).count() == 0
    assert client.call("list_vms") == []
    for pid in pids | {again.pid}:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert client.call("snapshot_info", name="gold").used_by == []


def test_clones_through_the_agent_learn_their_identity_over_vsock(lab: dict[str, Any]) -> None:
    """POST /snapshots of the clone_identity guest, then three clones with POST /vms: the agent
    sees the template wait for its identity, and tells each clone its name over vsock; each
    prints it with its own CID and a random number of its own."""
    import re

    import vnix.cluster.vcluster.deploy  # noqa: F401 - registers the agent's snapshot calls
    from vnix.cluster.errors import AgentError
    from vnix.node import models as agent

    guest = TESTKIT_DIR / "build" / "clone_identity.elf"
    client = lab["manager"].agent("local")
    client.call("import_image", agent.ImportImage(name="ident", kernel=str(guest)))
    gold = client.call("create_snapshot", agent.CreateSnapshot(name="who", image="ident",
                                                               memory="32M"))
    assert gold.identity_port == 5000 and gold.vsock and gold.used_by == []
    with pytest.raises(AgentError) as exc:  # one name, one snapshot
        client.call("create_snapshot", agent.CreateSnapshot(name="who", image="ident"))
    assert exc.value.status == 409
    names = [f"who-{i}" for i in range(3)]
    for n in names:
        out = client.call("create_vm", agent.CreateVm(name=n, image="ident", snapshot="who"))
        assert out.state == "running" and out.driver == "native"
    seen = {}
    for n in names:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = client.call("console", name=n).lines
            got = [m for ln in lines if (m := re.search(r"identity: name=(\S+) addr=\S+ "
                                                        r"cid=(\d+) mac=\S+ random=(\d+)", ln))]
            if got:
                seen[n] = got[0].groups()
                break
            time.sleep(0.05)
        assert n in seen, f"{n} never told its identity: {lines}"
        assert seen[n][0] == n
    assert len({cid for _, cid, _ in seen.values()}) == 3  # a CID each
    assert len({r for _, _, r in seen.values()}) == 3  # reseeded: no shared random state
    assert sorted(client.call("snapshot_info", name="who").used_by) == names
    with pytest.raises(AgentError) as exc:  # in use
        client.call("delete_snapshot", name="who")
    assert exc.value.status == 409
    for n in names:
        client.call("delete_vm", name=n)
    client.call("delete_snapshot", name="who")
    assert [s.name for s in client.call("list_snapshots")] == []


def test_one_vm_from_a_snapshot_through_the_manager(lab: dict[str, Any]) -> None:
    """CreateVm with 'snapshot' (REST POST /vms, vnix vm create --snapshot): a clone of the
    host's golden snapshot, the snapshot's machine; the snapshot's image cannot be deleted
    while the snapshot exists."""
    from vnix.cluster.auth import Actor, Role
    from vnix.cluster.errors import AgentError, NotFound
    from vnix.cluster.ops_vm import CreateVm, DeleteVm, StartVm, StopVm
    from vnix.cluster.tables import Vm
    from vnix.node import models as agent

    m, store = lab["manager"], lab["store"]
    admin = Actor("admin", Role.ADMIN)
    client = m.agent("local")
    with pytest.raises(NotFound, match="no snapshot 'solo' on any host"):
        m.submit(CreateVm(name="solo-1", snapshot="solo"), admin)
    client.call("create_snapshot", agent.CreateSnapshot(name="solo", image="idle",
                                                        memory="48M", vsock=False))
    job = m.runner.wait(m.submit(CreateVm(name="solo-1", snapshot="solo"), admin), 60)
    assert job.state == "succeeded", job.error
    with store.session() as s:
        vm = s.get(Vm, "solo-1")
        assert vm is not None
        assert (vm.host, vm.actual, vm.image, vm.memory_mib) == ("local", "running", "idle", 48)
    info = client.call("vm_info", name="solo-1")
    assert info.driver == "native" and info.memory_mib == 48 and info.state == "running"
    assert "cloned from golden.snap" in info.detail
    assert client.call("snapshot_info", name="solo").used_by == ["solo-1"]
    lines = wait_ticks(client, "solo-1", after=2)
    assert "tick 1" not in lines, lines  # it began where the template was saved
    # an ordinary VM afterwards
    assert m.runner.wait(m.submit(StopVm(name="solo-1", timeout=10), admin), 60).state == \
        "succeeded"
    assert m.runner.wait(m.submit(StartVm(name="solo-1"), admin), 60).state == "succeeded"
    wait_ticks(client, "solo-1", after=2)

    with pytest.raises(AgentError) as exc:  # the image stays while a snapshot needs it
        client.call("delete_image", name="idle")
    assert exc.value.status == 409 and "in use by VM(s) solo-1" in exc.value.message
    assert m.runner.wait(m.submit(DeleteVm(name="solo-1"), admin), 60).state == "succeeded"
    with pytest.raises(AgentError) as exc:
        client.call("delete_image", name="idle")
    assert exc.value.status == 409
    assert "golden snapshot(s) made from it: solo;" in exc.value.message
    assert client.call("image_info", name="idle").kernel
    client.call("delete_snapshot", name="solo")
    assert [s.name for s in client.call("list_snapshots")] == []


def test_clones_outlive_a_killed_agent_and_its_clone_server(tmp_path: Path) -> None:
    """`vnix agent` killed with SIGKILL: its clones run on; the next agent finds them running
    (same processes), ends the clone server the dead one left, and clones with a new one."""
    import signal
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from agent_process import running_agent

    if not GUEST.is_file():
        build()
    gen = running_agent(tmp_path, "native", TOKEN, GUEST)
    a = next(gen)
    pid_file = a.data_dir / "snapshots" / "gold" / "clone-server.pid"
    try:
        pids = {}
        for n in ("k1", "k2"):
            r = a.http.post("/vms", json={"name": n, "image": "idle", "snapshot": "gold",
                                          "memory": "32M"})
            assert r.status_code == 201, r.text
            pids[n] = r.json()["pid"]
        old_server = int(pid_file.read_text())
        a.kill()
        for n in pids:  # no agent: the guests tick on
            before = sum(1 for ln in (a.data_dir / "run" / "native" / n / "console.log")
                         .read_text().splitlines() if ln.startswith("tick "))
            time.sleep(0.6)
            after = sum(1 for ln in (a.data_dir / "run" / "native" / n / "console.log")
                        .read_text().splitlines() if ln.startswith("tick "))
            assert after > before, n
        a.start()
        vms = {v["name"]: v for v in a.http.get("/vms").json()}
        assert {n: (vms[n]["state"], vms[n]["pid"]) for n in pids} == \
            {n: ("running", p) for n, p in pids.items()}
        r = a.http.post("/vms", json={"name": "k3", "image": "idle", "snapshot": "gold"})
        assert r.status_code == 201 and r.json()["state"] == "running", r.text
        assert int(pid_file.read_text()) != old_server
        assert not psutil.pid_exists(old_server) or \
            psutil.Process(old_server).status() == psutil.STATUS_ZOMBIE
        a.wait_console("k3", "tick ")
        for n in ("k1", "k2", "k3"):
            assert a.http.delete(f"/vms/{n}").status_code == 204
        assert a.http.delete("/snapshots/gold").status_code == 204
    finally:
        if pid_file.exists():  # a failed test leaves no clone server behind
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        for _ in gen:
            pass


def test_clones_of_an_image_with_a_disk_get_their_own_overlay(lab: dict[str, Any]) -> None:
    """The golden snapshot keeps the template's disk as saved (an overlay of the image's); each
    clone runs on its own qcow2 overlay of that one, remade when a stopped clone starts again
    (back to the golden state, memory and disk alike)."""
    import json
    import subprocess

    import vnix.cluster.vcluster.deploy  # noqa: F401 - registers the agent's snapshot calls
    from vnix.node import models as agent

    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img")
    raw = lab["dir"] / "disk.raw"
    raw.write_bytes(b"\0" * (4 << 20))
    client = lab["manager"].agent("local")
    client.call("import_image", agent.ImportImage(name="idled", kernel=str(GUEST), path=str(raw)))

    def backing(path: str) -> str:
        out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path],
                             capture_output=True, text=True, check=True)
        return str(json.loads(out.stdout)["backing-filename"])

    def read0(path: str) -> bytes:
        """The first 16 bytes the guest would read from disk ``path`` (through its chain)."""
        out = subprocess.run(["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", f"if={path}",
                              f"of={lab['dir'] / 'head.bin'}", "bs=16", "count=1"],
                             capture_output=True, text=True, check=True)
        assert out.returncode == 0
        return (lab["dir"] / "head.bin").read_bytes()[:16]

    vms = [client.call("create_vm", agent.CreateVm(name=f"d{i}", image="idled", snapshot="dg",
                                                   memory="32M")) for i in range(2)]
    gold = client.call("snapshot_info", name="dg")
    assert gold.disk and backing(gold.disk).endswith("disk.raw")  # the image's disk below
    disks = [v.disks[0].path for v in vms]
    assert len(set(disks)) == 2 and all(backing(d) == gold.disk for d in disks)
    assert all(f"/overlays/d{i}/" in d for i, d in enumerate(disks))
    wait_ticks(client, "d0", after=2)
    client.call("force_stop_vm", name="d0")
    # what the clone wrote (here written for it while stopped) is in its overlay only
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", disks[0]],
                   check=True, capture_output=True)
    assert read0(disks[0]) == b"\x5a" * 16 and read0(disks[1]) == b"\0" * 16
    assert client.call("start_vm", name="d0").state == "running"
    assert backing(disks[0]) == gold.disk and read0(disks[0]) == b"\0" * 16  # made afresh
    wait_ticks(client, "d0", after=2)
    for v in vms:
        client.call("delete_vm", name=v.name)
    assert not (lab["dir"] / "a" / "overlays" / "d0").exists()
    client.call("delete_snapshot", name="dg")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_a_snapshot_cluster_spread_over_two_hosts(tmp_path: Path) -> None:
    """Two agents (native driver) in two network namespaces; a cluster of 4 clones spread over
    them: each host makes its own golden snapshot of the image and clones its nodes from it."""
    from vnix.cluster.auth import SYSTEM, Actor, Role
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.ops_admin import RegisterHost
    from vnix.cluster.scheduler import Overcommit
    from vnix.cluster.store import Store, sqlite_url
    from vnix.cluster.tables import Vm
    from vnix.cluster.vcluster.ops import CreateCluster, DeleteCluster
    from vnix.cluster.vcluster.testlab import HostLab
    from vnix.node import models as agent

    if not GUEST.is_file():
        build()
    xml = XML.replace('snapshot="gold"/>', 'snapshot="gold">\n    <placement policy="spread"/>\n'
                      '  </group>')
    tmp = Path(tempfile.mkdtemp(prefix="vnx-dm-", dir="/tmp"))
    store = Store(sqlite_url(tmp / "m.db"))
    m = Manager(store, ManagerConfig(monitor=False, workers=2,
                                     overcommit=Overcommit(cpu_ratio=16, memory_ratio=1.0)))
    m.ensure_admin("snap-test-admin-password")
    try:
        with HostLab(2, subnet="198.19.213") as lab:
            for i in range(2):
                url = lab.start_agent(i, tmp / f"h{i}", TOKEN, driver="native")
                m.agent_for(f"h{i}", url, TOKEN).call(
                    "import_image", agent.ImportImage(name="idle", kernel=str(GUEST)))
                m.submit(RegisterHost(name=f"h{i}", url=url, token=TOKEN), SYSTEM)
            m.start()
            admin = Actor("admin", Role.ADMIN)
            job = m.runner.wait(m.submit(CreateCluster(xml=xml), admin), 120)
            assert job.state == "succeeded", job.error
            with store.session() as s:
                where = {v.name: (v.host, v.actual) for v in s.query(Vm)}
            assert sorted(h for h, _ in where.values()) == ["h0", "h0", "h1", "h1"]
            assert all(a == "running" for _, a in where.values())
            for h in ("h0", "h1"):
                client = m.agent(h)
                gold = client.call("snapshot_info", name="gold")  # one golden per host
                assert sorted(gold.used_by) == sorted(n for n, (hh, _) in where.items() if hh == h)
                for n in gold.used_by:
                    wait_ticks(client, n, after=2)
            job = m.runner.wait(m.submit(DeleteCluster(name="sc"), admin), 120)
            assert job.state == "succeeded", job.error
            for h in ("h0", "h1"):
                assert m.agent(h).call("list_vms") == []
    finally:
        m.stop()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
