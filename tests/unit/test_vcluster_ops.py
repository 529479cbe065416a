"""Cluster operations through the manager with in-process fake agents (no networks here: those
make bridges, see tests/integration/test_multihost*.py)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import Conflict, Forbidden, NoCapacity, NotFound, QuotaExceeded
from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.ops_admin import CreateUser, SetQuota
from vnix.cluster.tables import Cluster, Job, Vm
from vnix.cluster.testing import FakeAgents, fake_manager
from vnix.cluster.vcluster import ClusterXmlError, parse_cluster
from vnix.cluster.vcluster.model import Profile
from vnix.cluster.vcluster.ops import (
    BatchAction,
    CreateCluster,
    DeleteCluster,
    ExportCluster,
    ImportCluster,
    MoveNode,
    ScaleGroup,
)
from vnix.cluster.vcluster.profiles import DeleteProfile, SaveProfile, list_profiles

ADMIN = Actor("admin", Role.ADMIN)
BOB = Actor("bob", Role.USER)
EVE = Actor("eve", Role.USER)

LAB = """<?xml version="1.0"?>
<cluster name="lab">
  <profile name="small" cpus="1" memory="64M"/>
  <group name="head" count="1" image="tiny" profile="small"/>
  <group name="work" count="3" image="tiny" profile="small">
    <placement policy="anti-affinity"/>
  </group>
</cluster>
"""


@pytest.fixture
def agents(tmp_path: Path) -> FakeAgents:
    return FakeAgents(tmp_path / "agents", ["h1", "h2", "h3"])


@pytest.fixture
def manager(tmp_path: Path, agents: FakeAgents) -> Iterator[Manager]:
    m = fake_manager(tmp_path, agents, ManagerConfig(monitor=False))
    m.start()
    for name in ("bob", "eve"):
        m.submit(CreateUser(name=name, password=f"{name}-password", role="user"), ADMIN)
    yield m
    m.stop()


def run(m: Manager, op: object, actor: Actor = BOB) -> Job:
    job = m.runner.wait(m.submit(op, actor), 30)  # type: ignore[arg-type]
    assert job.state == "succeeded", (job.error, job.log)
    return job


def vms(m: Manager, cluster: str | None = None) -> dict[str, Vm]:
    with m.store.session() as s:
        q = s.query(Vm)
        if cluster:
            q = q.filter(Vm.cluster == cluster)
        return {v.name: v for v in q}


def test_create_places_in_parallel_with_anti_affinity_and_names_the_guests(
        manager: Manager, agents: FakeAgents) -> None:
    job = run(manager, CreateCluster(xml=LAB))
    nodes = vms(manager, "lab")
    assert sorted(nodes) == ["lab-head-0", "lab-work-0", "lab-work-1", "lab-work-2"]
    assert {nodes[f"lab-work-{i}"].host for i in range(3)} == {"h1", "h2", "h3"}
    for v in nodes.values():
        assert (v.owner, v.group in ("head", "work"), v.actual) == ("bob", True, "running")
        assert agents.vm_state(v.host or "", v.name) == "running"
        assert v.spec["cmdline"] == f"console=ttyS0 vnix.hostname={v.name}"
        assert v.memory_mib == 64
    assert job.progress == 1.0 and job.result and set(job.result["nodes"]) == set(nodes)
    assert {ln for ln in job.log.splitlines() if ln.endswith(": ok")} == {
        f"{n}: ok" for n in nodes}
    with manager.store.session() as s:
        row = s.get(Cluster, "lab")
        assert row is not None and row.state == "active"
        assert {g.name: (g.count, g.anti_affinity) for g in row.groups} == {
            "head": (1, False), "work": (3, True)}
    # the name is taken now; a fourth anti-affine node has no host left
    with pytest.raises(Conflict, match="cluster 'lab' exists already"):
        manager.submit(CreateCluster(xml=LAB), BOB)
    with pytest.raises(NoCapacity, match="h1 already holds a VM of group 'lab/work'"):
        manager.submit(ScaleGroup(cluster="lab", group="work", count=4), BOB)
    assert len(vms(manager, "lab")) == 4  # the refused scale stored nothing


def test_spread_and_host_constraints(manager: Manager) -> None:
    xml = LAB.replace('policy="anti-affinity"/>', 'policy="spread"><host>h2</host>'
                      '<host>h3</host></placement>').replace('count="3"', 'count="4"')
    run(manager, CreateCluster(xml=xml, name="sp"))
    hosts = sorted(v.host or "" for v in vms(manager, "sp").values() if v.group == "work")
    assert hosts == ["h2", "h2", "h3", "h3"]


def test_bad_files_are_refused_before_any_job_with_lines(manager: Manager) -> None:
    bad = LAB.replace('<group name="head" count="1"', '<group name="head"')
    with pytest.raises(ClusterXmlError) as exc:
        manager.submit(CreateCluster(xml=bad, filename="lab.xml"), BOB)
    assert str(exc.value) == "lab.xml:4: element 'group': missing required attribute 'count'"
    with pytest.raises(ClusterXmlError, match="lab.xml:4: group 'head': unknown profile 'big'"):
        manager.submit(CreateCluster(xml=LAB.replace('profile="small"/>\n  <group name="work"',
                                                     'profile="big"/>\n  <group name="work"'),
                                     filename="lab.xml"), BOB)
    snap = LAB.replace('image="tiny" profile="small"/>', 'image="tiny" source="snapshot" '
                       'snapshot="gold" driver="qemu" profile="small"/>')
    with pytest.raises(Exception, match="makes clones on the native driver, not 'qemu'"):
        manager.submit(CreateCluster(xml=snap), BOB)
    with pytest.raises(NotFound, match="no image 'nope'"):
        manager.submit(CreateCluster(xml=LAB.replace('image="tiny"', 'image="nope"')), BOB)
    with manager.store.session() as s:
        assert s.query(Cluster).count() == 0 and s.query(Vm).count() == 0
        assert s.query(Job).filter(Job.kind == "create_cluster").count() == 0


def test_quota_counts_the_whole_cluster(manager: Manager) -> None:
    manager.submit(SetQuota(name="bob", max_vms=3), ADMIN)
    with pytest.raises(QuotaExceeded, match="bob may have 3 VMs"):
        manager.submit(CreateCluster(xml=LAB), BOB)
    with manager.store.session() as s:
        assert s.query(Cluster).count() == 0 and s.query(Vm).count() == 0


def test_export_gives_the_cluster_as_it_is_now_and_imports_back(manager: Manager) -> None:
    run(manager, SaveProfile(profile=Profile(name="tiny64", memory_mib=64, cpus=1)))
    xml = LAB.replace('profile="small"/>\n  <group name="work"',
                      'profile="tiny64"/>\n  <group name="work"')
    run(manager, CreateCluster(xml=xml))
    run(manager, ScaleGroup(cluster="lab", group="work", count=2))
    out = run(manager, ExportCluster(name="lab"), Actor("gus", Role.GUEST)).result
    assert out is not None
    exported = parse_cluster(out["xml"])
    assert exported.group("work").count == 2  # the scale shows
    assert {p.name for p in exported.profiles} == {"small", "tiny64"}  # self-contained
    original = parse_cluster(xml)
    assert original.model_copy(update={"profiles": exported.profiles, "groups": [
        original.group("head"), original.group("work").model_copy(update={"count": 2})]}) \
        == exported
    # import under another name: the same cluster, new nodes
    run(manager, ImportCluster(xml=out["xml"], name="lab2"))
    assert sorted(vms(manager, "lab2")) == ["lab2-head-0", "lab2-work-0", "lab2-work-1"]
    again = run(manager, ExportCluster(name="lab2"), BOB).result
    assert again is not None
    assert parse_cluster(again["xml"]) == exported.model_copy(update={"name": "lab2"})


def test_scale_up_and_down(manager: Manager, agents: FakeAgents) -> None:
    run(manager, CreateCluster(xml=LAB.replace('policy="anti-affinity"', 'policy="any"')))
    job = run(manager, ScaleGroup(cluster="lab", group="work", count=5))
    assert job.result and sorted(job.result["added"]) == ["lab-work-3", "lab-work-4"]
    assert all(v.actual == "running" for v in vms(manager, "lab").values())
    gone = vms(manager, "lab")["lab-work-4"]
    run(manager, ScaleGroup(cluster="lab", group="work", count=1))
    assert sorted(vms(manager, "lab")) == ["lab-head-0", "lab-work-0"]
    assert agents.vm_state(gone.host or "", "lab-work-4") is None  # deleted on its host
    with pytest.raises(NotFound, match="has no group 'nope'"):
        manager.submit(ScaleGroup(cluster="lab", group="nope", count=1), BOB)


def test_batch_actions_skip_nodes_in_the_wrong_state(manager: Manager,
                                                     agents: FakeAgents) -> None:
    run(manager, CreateCluster(xml=LAB))
    job = run(manager, BatchAction(cluster="lab", action="stop", group="work", force=True))
    nodes = vms(manager, "lab")
    assert [n for n, v in sorted(nodes.items()) if v.actual == "stopped"] == [
        "lab-work-0", "lab-work-1", "lab-work-2"]
    assert nodes["lab-head-0"].actual == "running"
    job = run(manager, BatchAction(cluster="lab", action="start"))
    assert job.result and sorted(job.result["done"]) == ["lab-work-0", "lab-work-1", "lab-work-2"]
    assert "lab-head-0" in job.result["skipped"] and "it is running" in job.log
    run(manager, BatchAction(cluster="lab", action="suspend"))
    assert {v.actual for v in vms(manager, "lab").values()} == {"suspended"}
    run(manager, BatchAction(cluster="lab", action="resume"))
    assert {v.actual for v in vms(manager, "lab").values()} == {"running"}
    for v in vms(manager, "lab").values():
        assert agents.vm_state(v.host or "", v.name) == "running"
    # other users do not even see bob's cluster; guests see it but may not act
    with pytest.raises(NotFound):
        manager.submit(BatchAction(cluster="lab", action="stop"), EVE)
    with pytest.raises(Forbidden):
        manager.submit(BatchAction(cluster="lab", action="stop"), Actor("gus", Role.GUEST))


def test_move_node_between_clusters(manager: Manager, agents: FakeAgents) -> None:
    run(manager, CreateCluster(xml=LAB))
    other = LAB.replace('name="lab"', 'name="other"').replace(
        '<profile name="small" cpus="1" memory="64M"/>',
        '<profile name="small" cpus="1" memory="32M"/>')
    run(manager, CreateCluster(xml=other))
    job = run(manager, MoveNode(node="lab-work-2", to="other"))
    assert job.result and job.result["steps"][1:] == [
        "suspended", "re-assigned lab -> other/work", "resumed"]
    assert job.result["steps"][0].startswith(("ballooned to 32 MiB", "balloon skipped"))
    moved = vms(manager)["lab-work-2"]
    assert (moved.cluster, moved.group, moved.actual) == ("other", "work", "running")
    assert agents.vm_state(moved.host or "", "lab-work-2") == "running"
    counts = {}
    with manager.store.session() as s:
        for name in ("lab", "other"):
            row = s.get(Cluster, name)
            assert row is not None
            counts[name] = {g.name: g.count for g in row.groups}
            assert parse_cluster(row.xml).group("work").count == counts[name]["work"]
    assert counts == {"lab": {"head": 1, "work": 2}, "other": {"head": 1, "work": 4}}
    with pytest.raises(Exception, match="in cluster other already"):
        manager.submit(MoveNode(node="lab-work-2", to="other"), BOB)


def test_delete_cluster_removes_every_node(manager: Manager, agents: FakeAgents) -> None:
    run(manager, CreateCluster(xml=LAB))
    placed = {n: v.host for n, v in vms(manager, "lab").items()}
    run(manager, DeleteCluster(name="lab"))
    assert vms(manager, "lab") == {}
    for n, h in placed.items():
        assert agents.vm_state(h or "", n) is None
    with manager.store.session() as s:
        assert s.get(Cluster, "lab") is None
    with pytest.raises(NotFound):
        manager.submit(DeleteCluster(name="lab"), BOB)


def test_profiles_owned_and_protected_while_used(manager: Manager) -> None:
    run(manager, SaveProfile(profile=Profile(name="p1", cpus=2, memory_mib=128)))
    with pytest.raises(Forbidden, match="belongs to bob"):
        manager.submit(SaveProfile(profile=Profile(name="p1", cpus=1)), EVE)
    run(manager, CreateCluster(xml=LAB.replace('profile="small"/>\n  <group name="work"',
                                               'profile="p1"/>\n  <group name="work"')))
    assert vms(manager, "lab")["lab-head-0"].cpus == 2
    with pytest.raises(Conflict, match="used by cluster"):
        manager.submit(DeleteProfile(name="p1"), BOB)
    with manager.store.session() as s:
        listed = list_profiles(s)
    assert [(p["name"], p["owner"], p["used_by"]) for p in listed] == [("p1", "bob", ["lab"])]
    run(manager, DeleteCluster(name="lab"))
    run(manager, DeleteProfile(name="p1"))
    with pytest.raises(NotFound):
        manager.submit(DeleteProfile(name="p1"), BOB)


def test_a_cancelled_queued_deploy_or_scale_leaves_nothing_behind(tmp_path: Path,
                                                                  agents: FakeAgents) -> None:
    m = fake_manager(tmp_path, agents, ManagerConfig(monitor=False))
    m.start()
    m.submit(CreateUser(name="bob", password="bob-password", role="user"), ADMIN)
    run(m, CreateCluster(xml=LAB, name="keep"))
    m.runner.stop()  # no workers: the next jobs stay queued
    job_id = m.submit(CreateCluster(xml=LAB), BOB)
    scale_id = m.submit(ScaleGroup(cluster="keep", group="head", count=3), BOB)
    assert len(vms(m, "lab")) == 4 and len(vms(m, "keep")) == 6  # recorded by check
    assert m.runner.cancel(job_id) == "cancelled"
    assert m.runner.cancel(scale_id) == "cancelled"
    assert vms(m, "lab") == {} and sorted(vms(m, "keep")) == [
        "keep-head-0", "keep-work-0", "keep-work-1", "keep-work-2"]
    with m.store.session() as s:
        assert s.get(Cluster, "lab") is None
        keep = s.get(Cluster, "keep")
        assert keep is not None and parse_cluster(keep.xml).group("head").count == 1
    m.stop()
