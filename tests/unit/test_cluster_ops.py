"""Operations through the manager with in-process fake agents: placement, batches, quotas,
states, jobs (progress, log, cancel), and the reconcile loop after restarts and lost hosts."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import Conflict, Forbidden, NotFound, QuotaExceeded
from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.ops_admin import CreateUser, SetQuota
from vnix.cluster.ops_vm import CreateVm, CreateVms, DeleteVm, PauseVm, StartVm, StopVm
from vnix.cluster.store import Store, sqlite_url
from vnix.cluster.tables import Host, Job, Vm
from vnix.cluster.testing import FakeAgents, fake_manager

ADMIN = Actor("admin", Role.ADMIN)
BOB = Actor("bob", Role.USER)


@pytest.fixture
def agents(tmp_path: Path) -> FakeAgents:
    return FakeAgents(tmp_path / "agents", ["h1", "h2", "h3"])


@pytest.fixture
def manager(tmp_path: Path, agents: FakeAgents) -> Iterator[Manager]:
    m = fake_manager(tmp_path, agents, ManagerConfig(monitor=False, down_after=2,
                                                     monitor_interval_s=0.05))
    m.start()
    m.submit(CreateUser(name="bob", password="bob-password", role="user"), ADMIN)
    yield m
    m.stop()


def vm(m: Manager, name: str) -> Vm:
    with m.store.session() as s:
        row = s.get(Vm, name)
        assert row is not None, name
        return row


def job(m: Manager, job_id: int) -> Job:
    return m.runner.wait(job_id, 10)


def wait_until(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_a_batch_spreads_over_hosts_in_parallel_with_progress_and_log(manager: Manager,
                                                                      agents: FakeAgents) -> None:
    op = CreateVms(vms=[CreateVm(name=f"n{i}", memory="64M", cluster=None, group="hpc",
                                 anti_affinity=True) for i in range(3)])
    j = job(manager, manager.submit(op, BOB))
    assert (j.state, j.progress) == ("succeeded", 1.0), j.error
    hosts = {vm(manager, f"n{i}").host for i in range(3)}
    assert hosts == {"h1", "h2", "h3"}
    for i in range(3):
        row = vm(manager, f"n{i}")
        assert (row.owner, row.desired, row.actual) == ("bob", "running", "running")
        assert agents.vm_state(row.host or "", row.name) == "running"
    assert {ln for ln in j.log.splitlines() if ln.endswith(": ok")} == {"n0: ok", "n1: ok", "n2: ok"}
    # a fourth of the group has nowhere to go, and the refusal says why, host by host
    with pytest.raises(Conflict, match="h1 already holds a VM of group 'hpc', h2 already"):
        manager.submit(CreateVm(name="n3", group="hpc", anti_affinity=True), BOB)


def test_bad_input_is_refused_before_any_job(manager: Manager) -> None:
    for op, err, text in [
        (CreateVm(name="a", memory="lots"), "BadRequest", "cannot read memory size 'lots'"),
        (CreateVm(name="a", memory="8M"), "BadRequest", "too small"),
        (CreateVm(name="a", image="nope"), "NotFound", "no image 'nope' on any host"),
        (CreateVm(name="a", memory="64T"), "NoCapacity", "no host can take 67108864 MiB"),
        (CreateVm(name="a", owner="admin"), "Forbidden", "only an admin may create VMs"),
        (StartVm(name="ghost"), "NotFound", "no VM 'ghost'"),
    ]:
        with pytest.raises(Exception) as e:
            manager.submit(op, BOB)
        assert type(e.value).__name__ == err and text in str(e.value), (op, e.value)
    with manager.store.session() as s:
        assert s.query(Job).filter(Job.kind != "create_user",
                                   Job.kind != "register_host").count() == 0


def test_quotas_count_vms_cpus_and_memory(manager: Manager) -> None:
    manager.submit(SetQuota(name="bob", max_vms=2, max_cpus=3, max_memory="256M"), ADMIN)
    job(manager, manager.submit(CreateVm(name="q1", cpus=2, memory="128M"), BOB))
    with pytest.raises(QuotaExceeded, match="bob may have 3 vCPUs, has 2 and asks for 2"):
        manager.submit(CreateVm(name="q2", cpus=2, memory="64M"), BOB)
    with pytest.raises(QuotaExceeded, match="256 MiB of memory, has 128 and asks for 200"):
        manager.submit(CreateVm(name="q2", memory="200M"), BOB)
    job(manager, manager.submit(CreateVm(name="q2", memory="64M"), BOB))
    with pytest.raises(QuotaExceeded, match="bob may have 2 VMs, has 2"):
        manager.submit(CreateVm(name="q3", memory="16M"), BOB)
    # a batch counts as a whole, and admins have no quota
    with pytest.raises(QuotaExceeded):
        manager.submit(CreateVms(vms=[CreateVm(name="q4"), CreateVm(name="q5")]), BOB)
    job(manager, manager.submit(CreateVm(name="big", cpus=4, memory="1G", owner="bob"), ADMIN))
    assert manager.usage_of("bob") == (3, 7, 1216)


def test_state_guards_and_ownership(manager: Manager) -> None:
    job(manager, manager.submit(CreateVm(name="mine", memory="64M"), BOB))
    with pytest.raises(Conflict, match="cannot start VM 'mine': it is running, needs"):
        manager.submit(StartVm(name="mine"), BOB)
    assert job(manager, manager.submit(PauseVm(name="mine"), BOB)).state == "succeeded"
    assert vm(manager, "mine").actual == "paused"
    j = job(manager, manager.submit(StopVm(name="mine", force=True), BOB))
    assert (j.state, vm(manager, "mine").actual) == ("succeeded", "stopped")
    manager.submit(CreateUser(name="eve", password="eve-password", role="user"), ADMIN)
    eve, guest = Actor("eve", Role.USER), Actor("gus", Role.GUEST)
    with pytest.raises(NotFound):  # eve cannot even see bob's VM
        manager.submit(StartVm(name="mine"), eve)
    with pytest.raises(Forbidden):
        manager.submit(StartVm(name="mine"), guest)
    assert job(manager, manager.submit(DeleteVm(name="mine"), ADMIN)).state == "succeeded"
    with manager.store.session() as s:
        assert s.get(Vm, "mine") is None


def test_cancel_a_running_batch_keeps_what_was_made_and_nothing_else(
        manager: Manager, agents: FakeAgents) -> None:
    agents.delay = 0.05
    op = CreateVms(vms=[CreateVm(name=f"c{i}", memory="16M") for i in range(12)], parallel=1)
    job_id = manager.submit(op, BOB)
    wait_until(lambda: "c0: ok" in manager.runner.wait(job_id, 0).log)
    assert manager.runner.cancel(job_id) == "running"
    j = job(manager, job_id)
    assert j.state == "cancelled", (j.state, j.error)
    assert 0 < j.progress < 1
    with manager.store.session() as s:
        names = sorted(v.name for v in s.query(Vm))
    assert 1 <= len(names) < 12
    for name in names:  # every VM the store keeps exists and runs
        row = vm(manager, name)
        assert agents.vm_state(row.host or "", name) == "running"
    with pytest.raises(Conflict, match="has already cancelled"):
        manager.runner.cancel(job_id)


def test_cancel_a_queued_job_removes_its_vm(tmp_path: Path, agents: FakeAgents) -> None:
    m = fake_manager(tmp_path, agents)  # not started: jobs stay queued
    job_id = m.submit(CreateVm(name="later"), ADMIN)
    assert vm(m, "later").actual == "creating"
    assert m.runner.cancel(job_id) == "cancelled"
    with m.store.session() as s:
        assert s.get(Vm, "later") is None


def test_reconcile_after_a_manager_restart(tmp_path: Path, agents: FakeAgents) -> None:
    cfg = ManagerConfig(monitor=False, monitor_interval_s=0.05)
    m = fake_manager(tmp_path, agents, cfg)
    m.start()
    job(m, m.submit(CreateVms(vms=[CreateVm(name="r1"), CreateVm(name="r2", start=False)]),
                    ADMIN))
    host = vm(m, "r1").host or ""
    m.stop()
    # while no manager runs, r1 is powered off behind its back
    r = agents.clients[host].post("/vms/r1/force-stop", headers=agents.auth)
    assert r.json()["state"] == "stopped"
    m2 = Manager(Store(sqlite_url(tmp_path / "manager.db")), cfg,
                 http_factory=agents.http_factory)
    m2.start()
    try:
        started = m2.monitor.poll_once()
        assert started["h1"].ok
        wait_until(lambda: ("r1", "start_vm") in m2.monitor.actions)  # recorded after the call
        assert agents.vm_state(host, "r1") == "running"
        assert agents.vm_state(vm(m2, "r2").host or "", "r2") == "defined"  # desired stopped
        m2.monitor.poll_once(reconcile=False)
        assert vm(m2, "r1").actual == "running"
    finally:
        m2.stop()


def test_a_lost_host_is_down_its_vms_unknown_and_kept(manager: Manager,
                                                      agents: FakeAgents) -> None:
    job(manager, manager.submit(CreateVm(name="l1", host="h2"), ADMIN))
    agents.down.add("h2")
    manager.monitor.poll_once()
    with manager.store.session() as s:
        assert s.get(Host, "h2").state == "up"  # one missed poll is not yet down
    manager.monitor.poll_once()
    with manager.store.session() as s:
        h2 = s.get(Host, "h2")
        assert (h2.state, "connection refused" in h2.detail) == ("down", True)
        assert (s.get(Vm, "l1").actual, s.get(Host, "h1").state) == ("unknown", "up")
    with pytest.raises(Conflict, match="its host h2 is down"):
        manager.submit(PauseVm(name="l1"), ADMIN)
    with pytest.raises(Conflict, match="host h2 cannot take 256 MiB and 1 vCPU: h2 is down"):
        manager.submit(CreateVm(name="l2", host="h2"), ADMIN)
    # deleting while the host is away is remembered and done when it is back
    assert job(manager, manager.submit(DeleteVm(name="l1"), ADMIN)).result == {
        "vm": "l1", "deleted": False}
    agents.down.discard("h2")
    manager.monitor.poll_once()
    wait_until(lambda: agents.vm_state("h2", "l1") is None)
    with manager.store.session() as s:
        assert s.get(Host, "h2").state == "up"
        wait_until(lambda: vm_gone(manager, "l1"))


def vm_gone(m: Manager, name: str) -> bool:
    with m.store.session() as s:
        return s.get(Vm, name) is None


def test_a_vm_the_agent_lost_is_made_again_from_its_spec(manager: Manager,
                                                         agents: FakeAgents) -> None:
    job(manager, manager.submit(CreateVm(name="phoenix", memory="96M", cpus=2), ADMIN))
    host = vm(manager, "phoenix").host or ""
    agents.add(host)  # a new agent process on the same host: the fake driver forgot its VMs
    assert agents.vm_state(host, "phoenix") is None
    manager.monitor.poll_once(reconcile=False)
    assert vm(manager, "phoenix").actual == "missing"
    manager.monitor.reconcile()
    wait_until(lambda: agents.vm_state(host, "phoenix") == "running")
    info = agents.clients[host].get("/vms/phoenix", headers=agents.auth).json()
    assert (info["memory_mib"], info["cpus"]) == (96, 2)


def test_samples_are_written_for_hosts_and_vms(manager: Manager) -> None:
    from vnix.cluster import metrics

    job(manager, manager.submit(CreateVm(name="m1"), ADMIN))
    manager.monitor.poll_once(reconcile=False)
    manager.monitor.poll_once(reconcile=False)
    with manager.store.session() as s:
        assert len(metrics.series(s, "host", "h1", "memory_used_mib")) == 2
        assert [v for _, v in metrics.series(s, "vm", "m1", "memory_mib")] == [256.0, 256.0]
