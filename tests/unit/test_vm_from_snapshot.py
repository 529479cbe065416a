"""A single VM from a golden snapshot through the manager (``CreateVm.snapshot``, REST
``POST /vms {"snapshot": ...}``), with in-process fake agents.

The agents hold golden snapshots as the agent stores them (a record under
``<data_dir>/snapshots/<name>/``, no KVM here); h2 and h3 also run the native driver, whose
clone is replaced by a stand-in that records the request and makes the VM on the fake driver
(tests/integration/test_deploy_snapshot.py clones for real). Placement goes to a host that
holds the snapshot and can clone; every bad request is refused before any job, with the reason.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vnix.api.app import create_api
from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import BadRequest, NoCapacity, NotFound, QuotaExceeded
from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.ops_admin import CreateUser, SetQuota
from vnix.cluster.ops_vm import CreateVm, CreateVms
from vnix.cluster.tables import Job, Vm
from vnix.cluster.testing import ADMIN_PASSWORD, AGENT_TOKEN, FakeAgents, fake_manager
from vnix.node.app import create_app
from vnix.node.models import CreateVm as AgentCreateVm
from vnix.node.models import VmOut
from vnix.node.snapshots import GoldenRecord
from vnix.node.vms import VmService

ADMIN = Actor("admin", Role.ADMIN)
BOB = Actor("bob", Role.USER)
NATIVE = ("h2", "h3")


def golden(agents: FakeAgents, host: str, name: str, image: str = "tiny",
           memory_mib: int = 64, cpus: int = 1) -> None:
    """A golden snapshot record on ``host`` as vnix.node.snapshots writes one."""
    d = agents.root / host / "snapshots" / name
    d.mkdir(parents=True)
    (d / "golden.snap").write_bytes(b"")
    (d / "golden.json").write_text(json.dumps(asdict(GoldenRecord(
        name=name, image=image, memory_mib=memory_mib, cpus=cpus, cmdline="console=ttyS0",
        ready="tick 1", vsock=False, identity_port=None, disk=None,
        path=str(d / "golden.snap"), size=0, created=0.0, boot_s=0.1, save_s=0.1))))


@pytest.fixture
def cloned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, AgentCreateVm]]:
    """The agents' clone requests; each VM is then made on the fake driver."""
    seen: list[tuple[str, AgentCreateVm]] = []

    def clone(self: VmService, req: AgentCreateVm) -> VmOut:
        assert "native" in self.drivers and req.driver == "native"
        gold = self.snapshots.get(req.snapshot or "")  # the agent's own check: it holds it
        assert gold.image == req.image
        seen.append((self.data_dir.name, req))
        return self.create(req.model_copy(update={
            "snapshot": None, "driver": "fake", "memory": f"{gold.memory_mib}M",
            "cpus": gold.cpus}))

    monkeypatch.setattr(VmService, "clone", clone)
    return seen


@pytest.fixture
def agents(tmp_path: Path) -> FakeAgents:
    agents = FakeAgents(tmp_path / "agents", ["h1", "h2", "h3"])
    for host in NATIVE:  # the same agents with the native driver enabled as well
        app = create_app(agents.root / host, AGENT_TOKEN, ["fake", "native"], "fake",
                         reconcile=False)
        agents.clients[host] = TestClient(app, base_url=agents.url(host))
    golden(agents, "h1", "gold")  # h1 holds one but cannot clone (no native driver)
    golden(agents, "h2", "gold")
    golden(agents, "h2", "big", memory_mib=512, cpus=2)
    return agents


@pytest.fixture
def manager(tmp_path: Path, agents: FakeAgents) -> Iterator[Manager]:
    m = fake_manager(tmp_path, agents, ManagerConfig(monitor=False))
    m.start()
    m.submit(CreateUser(name="bob", password="bob-password", role="user"), ADMIN)
    yield m
    m.stop()


def row(m: Manager, name: str) -> Vm | None:
    with m.store.session() as s:
        return s.get(Vm, name)


def test_a_vm_from_a_snapshot_is_a_clone_on_a_host_that_holds_it(
        manager: Manager, agents: FakeAgents, cloned: list[tuple[str, AgentCreateVm]]) -> None:
    # bob may have 128 MiB: the request's default 256M would not fit, the snapshot's 64 does
    manager.submit(SetQuota(name="bob", max_memory="128M"), ADMIN)
    job = manager.runner.wait(manager.submit(CreateVm(name="c1", snapshot="gold"), BOB), 10)
    assert job.state == "succeeded", job.error
    assert job.result == {"vm": "c1", "host": "h2"}
    vm = row(manager, "c1")
    assert vm is not None
    assert (vm.host, vm.actual, vm.image, vm.memory_mib, vm.cpus) == ("h2", "running", "tiny",
                                                                     64, 1)
    assert (vm.spec["snapshot"], vm.spec["driver"], vm.spec["memory"]) == ("gold", "native",
                                                                           "64M")
    assert [(h, r.name, r.snapshot, r.image) for h, r in cloned] == [("h2", "c1", "gold",
                                                                      "tiny")]
    assert agents.vm_state("h2", "c1") == "running"
    with manager.store.session() as s:  # the stored request is the snapshot's machine
        op = s.query(Job).filter(Job.kind == "create_vm").one().op
    assert (op["image"], op["memory"], op["cpus"], op["snapshot"]) == ("tiny", "64M", 1, "gold")

    # the snapshot's own values may be given; a batch places each on a holder
    ops = [CreateVm(name=f"b{i}", snapshot="gold", image="tiny", memory="64M", cpus=1,
                    driver="native") for i in range(2)]
    job = manager.runner.wait(manager.submit(CreateVms(vms=ops), ADMIN), 10)
    assert job.state == "succeeded", job.error
    assert job.result == {"vms": {"b0": "h2", "b1": "h2"}}
    # a second holder that can clone shares the load (most free memory first)
    golden(agents, "h3", "gold")
    job = manager.runner.wait(manager.submit(CreateVm(name="c2", snapshot="gold"), ADMIN), 10)
    assert job.state == "succeeded" and job.result == {"vm": "c2", "host": "h3"}, job.error
    # a bigger snapshot counts its own size against the host
    job = manager.runner.wait(manager.submit(CreateVm(name="c3", snapshot="big"), ADMIN), 10)
    assert job.state == "succeeded", job.error
    vm = row(manager, "c3")
    assert vm is not None and (vm.host, vm.memory_mib, vm.cpus) == ("h2", 512, 2)


@pytest.mark.parametrize("op,error,text", [
    (CreateVm(name="x", snapshot="nope"), NotFound,
     "no snapshot 'nope' on any host (known: big, gold)"),
    (CreateVm(name="x", snapshot="gold", driver="qemu"), BadRequest,
     "snapshot 'gold' makes clones on the native driver, not 'qemu'"),
    (CreateVm(name="x", snapshot="gold", image="other"), BadRequest,
     "snapshot 'gold' is not of image 'other' (h1: image tiny, 64 MiB, 1 vCPU, h2: image "
     "tiny, 64 MiB, 1 vCPU): leave 'image' out (a clone has its snapshot's)"),
    (CreateVm(name="x", snapshot="gold", memory="128M"), BadRequest,
     "a clone of snapshot 'gold' has its 64 MiB of memory, not 128M: leave 'memory' out"),
    (CreateVm(name="x", snapshot="gold", cpus=2), BadRequest,
     "a clone of snapshot 'gold' has its 1 vCPU(s), not 2: leave 'cpus' out"),
    (CreateVm(name="x", snapshot="gold", cmdline="quiet"), BadRequest,
     "keeps the snapshot's kernel command line: leave 'cmdline' out"),
    (CreateVm(name="x", snapshot="gold", disk_image="tiny"), BadRequest,
     "'disk_image' cannot be given with 'snapshot'"),
    (CreateVm(name="x", make_snapshot=True), BadRequest, "'make_snapshot' needs 'snapshot'"),
    (CreateVm(name="x", snapshot="gold", host="h3"), NoCapacity,
     "host h3 has no snapshot 'gold' (hosts with it: h1, h2)"),
    (CreateVm(name="x", snapshot="gold", host="h1"), NoCapacity,
     "host h1 cannot take 64 MiB and 1 vCPU: h1 cannot make clones (its agent has no native "
     "driver)"),
    (CreateVm(name="x", snapshot="gold", host="h9"), NoCapacity, "there is no host 'h9'"),
    (CreateVm(name="x", snapshot="big"), QuotaExceeded,  # the snapshot's size counts
     "quota exceeded: bob may have 256 MiB of memory, has 0 and asks for 512 more"),
])
def test_bad_requests_are_refused_before_any_job(manager: Manager, op: CreateVm,
                                                 error: type[Exception], text: str) -> None:
    manager.submit(SetQuota(name="bob", max_memory="256M"), ADMIN)
    with pytest.raises(error) as exc:
        manager.submit(op, BOB)
    assert text in str(exc.value)
    assert row(manager, "x") is None
    with manager.store.session() as s:
        assert s.query(Job).filter(Job.kind == "create_vm", Job.target == "vm/x").count() == 0


def test_no_host_that_can_clone(manager: Manager, agents: FakeAgents,
                                cloned: list[tuple[str, AgentCreateVm]]) -> None:
    golden(agents, "h1", "only")  # held by a host without the native driver alone
    with pytest.raises(NoCapacity) as exc:
        manager.submit(CreateVm(name="x", snapshot="only"), ADMIN)
    assert str(exc.value) == (
        "no host can take 64 MiB and 1 vCPU: h1 cannot make clones (its agent has no native "
        "driver), h2 has no snapshot 'only', h3 has no snapshot 'only'")
    golden(agents, "h3", "mixed", memory_mib=128)  # one name, two machines
    golden(agents, "h2", "mixed")
    with pytest.raises(BadRequest, match="snapshot 'mixed' is not the same machine on every "
                       r"host \(h2: image tiny, 64 MiB, 1 vCPU, h3: image tiny, 128 MiB, "
                       r"1 vCPU\): pin a host with 'host'"):
        manager.submit(CreateVm(name="x", snapshot="mixed"), ADMIN)
    job = manager.runner.wait(manager.submit(CreateVm(name="x", snapshot="mixed", host="h3"),
                                             ADMIN), 10)
    assert job.state == "succeeded" and job.result == {"vm": "x", "host": "h3"}, job.error
    assert [(h, r.snapshot, r.memory) for h, r in cloned] == [("h3", "mixed", "128M")]
    agents.down.add("h2")  # an agent that does not answer is no holder, and is named
    with pytest.raises(NotFound, match=r"no snapshot 'big' on any host \(known: gold, mixed, "
                       r"only\); h2 did not answer"):
        manager.submit(CreateVm(name="y", snapshot="big"), ADMIN)


def test_rest_api_answers_4xx(manager: Manager) -> None:
    with TestClient(create_api(manager)) as c:
        token = c.post("/api/v1/login", json={"name": "admin",
                                              "password": ADMIN_PASSWORD}).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        for body, status, text in [
            ({"name": "x", "snapshot": "nope"}, 404, "no snapshot 'nope' on any host"),
            ({"name": "x", "snapshot": "Bad Name"}, 422, "snapshot: String should match"),
            ({"name": "x", "snapshot": "gold", "image": "linux"}, 400,
             "snapshot 'gold' is not of image 'linux'"),
            ({"name": "x", "snapshot": "gold", "driver": "fake"}, 400,
             "makes clones on the native driver, not 'fake'"),
            ({"name": "x", "snapshot": "gold", "host": "h3"}, 409,
             "host h3 has no snapshot 'gold'"),
        ]:
            r = c.post("/api/v1/vms", json=body)
            assert r.status_code == status, (body, r.text)
            assert text in r.json()["error"], (body, r.json())
        schema = c.get("/api/openapi.json").json()
        assert "golden snapshot" in json.dumps(schema)
