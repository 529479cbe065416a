"""Golden snapshots through the manager (``vnix.cluster.ops_snapshot``, REST /snapshots), with
in-process fake agents.

h1 runs the fake driver only; h2 and h3 also the native one. Making a snapshot boots a template
VM on KVM, so the agents make them with vnix.cluster.testing.FakeGolden, which writes the record
as the real one does (tests/e2e/test_cli_vm_snapshot.py makes real ones) and makes clones on
the fake driver.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vnix.api.app import create_api
from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import AgentError, BadRequest, Conflict, NoCapacity, NotFound
from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.ops_admin import CreateUser
from vnix.cluster.ops_snapshot import CreateSnapshot, DeleteSnapshot
from vnix.cluster.ops_vm import CreateVm, DeleteVm
from vnix.cluster.tables import Host, Job
from vnix.cluster.testing import ADMIN_PASSWORD, FakeAgents, FakeGolden, fake_manager

ADMIN = Actor("admin", Role.ADMIN)
BOB = Actor("bob", Role.USER)


@pytest.fixture
def made() -> Iterator[list[tuple[str, str, str, int, int, bool]]]:
    """The snapshots the agents made: (host, name, image, MiB, vCPUs, vsock)."""
    with FakeGolden() as fake:
        yield fake.made


@pytest.fixture
def cloned(made: list) -> None:
    """A clone is made on the fake driver (FakeGolden, entered by ``made``); the agent counts
    it among the snapshot's users while it exists."""


@pytest.fixture
def agents(tmp_path: Path) -> FakeAgents:
    agents = FakeAgents(tmp_path / "agents", ["h1", "h2", "h3"], native=["h2", "h3"])
    kernel = agents.root / "files" / "bzImage"
    r = agents.clients["h2"].post("/images", headers=agents.auth, json={
        "name": "idle", "kernel": str(kernel)})  # idle only on h2
    assert r.status_code == 201, r.text
    return agents


@pytest.fixture
def manager(tmp_path: Path, agents: FakeAgents) -> Iterator[Manager]:
    m = fake_manager(tmp_path, agents, ManagerConfig(monitor=False))
    m.start()
    m.submit(CreateUser(name="bob", password="bob-password", role="user"), ADMIN)
    m.submit(CreateUser(name="gus", password="gus-password", role="guest"), ADMIN)
    yield m
    m.stop()


@pytest.fixture
def api(manager: Manager) -> Iterator[dict[str, TestClient]]:
    """A REST client per role: admin, bob (user), gus (guest)."""
    with TestClient(create_api(manager, own_manager=False)) as c:
        tokens = {who: c.post("/api/v1/login", json={"name": who, "password": pw}).json()["token"]
                  for who, pw in (("admin", ADMIN_PASSWORD), ("bob", "bob-password"),
                                  ("gus", "gus-password"))}

        class As:
            def __init__(self, who: str) -> None:
                self.h = {"Authorization": f"Bearer {tokens[who]}"}

            def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
                return lambda path, **kw: c.request(method.upper(), "/api/v1" + path,
                                                    headers=self.h, **kw)

        yield {who: As(who) for who in tokens}  # type: ignore[misc]


def run(manager: Manager, op: object, actor: Actor = ADMIN) -> Job:
    job = manager.runner.wait(manager.submit(op, actor), 10)  # type: ignore[arg-type]
    assert job.state == "succeeded", (job.error, job.log)
    return job


def test_make_list_clone_and_delete(manager: Manager, api: dict, made: list,
                                    cloned: None) -> None:
    job = run(manager, CreateSnapshot(name="gold", memory="64M"))
    # the scheduler picks a host with the native driver (h1 has none; h2 first on a tie)
    assert made == [("h2", "gold", "tiny", 64, 1, True)]
    assert job.result == {"snapshot": "gold", "hosts": {"h2": {"size": 4096, "boot_s": 0.5,
                                                               "save_s": 0.05}}}
    assert job.target == "snapshot/gold" and job.op["host"] == "h2"  # the choice is stored
    assert "h2: snapshot gold of tiny saved: 0.0 MiB (boot 0.50 s, save 0.05 s)" in job.log

    r = api["gus"].get("/snapshots")  # anyone logged in may list
    assert r.status_code == 200, r.text
    (g,) = r.json()["snapshots"]
    assert {k: g[k] for k in ("host", "name", "image", "memory_mib", "cpus", "size", "clones",
                              "used_by", "vsock", "identity")} == {
        "host": "h2", "name": "gold", "image": "tiny", "memory_mib": 64, "cpus": 1,
        "size": 4096, "clones": 0, "used_by": [], "vsock": True, "identity": False}
    assert g["created"].startswith("2023-11-14") and r.json()["unanswered"] == []

    # clones of it: the admin's and bob's; bob sees only his own among the clones
    run(manager, CreateVm(name="c1", snapshot="gold"))
    run(manager, CreateVm(name="c2", snapshot="gold"), BOB)
    used = {who: api[who].get("/snapshots").json()["snapshots"][0]
            for who in ("admin", "bob", "gus")}
    assert {w: (u["clones"], u["used_by"]) for w, u in used.items()} == {
        "admin": (2, ["c1", "c2"]), "bob": (2, ["c2"]), "gus": (2, ["c1", "c2"])}

    # deleting it is refused while clones use it, with their names
    r = api["admin"].delete("/snapshots/gold")
    assert r.status_code == 409, r.text
    assert r.json()["error"] == ("snapshot 'gold' is used by VM(s) c1, c2 on h2: delete those "
                                 "VMs first")
    with pytest.raises(Conflict, match="used by VM"):
        manager.submit(DeleteSnapshot(name="gold", host="h2"), ADMIN)
    run(manager, DeleteVm(name="c1"))
    run(manager, DeleteVm(name="c2"))
    r = api["admin"].delete("/snapshots/gold")
    assert r.status_code == 204, r.text
    assert api["admin"].get("/snapshots").json() == {"snapshots": [], "unanswered": []}
    assert api["admin"].delete("/snapshots/gold").status_code == 404
    with manager.store.session() as s:  # inline, but still a job (the audit log)
        job = s.query(Job).filter(Job.kind == "delete_snapshot", Job.state == "succeeded").one()
        assert job.target == "snapshot/gold" and "h2: snapshot gold deleted" in job.log


def test_on_every_native_host_and_on_one(manager: Manager, made: list) -> None:
    job = run(manager, CreateSnapshot(name="gold", memory="64M", host="all"))
    assert sorted(h for h, *_ in made) == ["h2", "h3"]
    assert sorted(job.result["hosts"]) == ["h2", "h3"]
    assert job.result["skipped"] == {"h1": "cannot make snapshots (its agent has no native "
                                           "driver)"}
    with pytest.raises(Conflict, match=r"^snapshot 'gold' exists already on h2, h3; no other "
                       r"host can make it: h1 cannot make snapshots \(its agent has no native "
                       r"driver\)$"):
        manager.submit(CreateSnapshot(name="gold", memory="64M", host="all"), ADMIN)
    # an image only h2 has: "all" is h2, h3 is skipped with the reason
    job = run(manager, CreateSnapshot(name="idle", image="idle", host="all"))
    assert job.result["skipped"] == {
        "h1": "cannot make snapshots (its agent has no native driver)",
        "h3": "has no image 'idle'"}
    assert "h3: skipped: has no image 'idle'" in job.log
    # pinned to a host; then "all" adds it where it is missing, the same machine
    run(manager, CreateSnapshot(name="one", host="h3", cpus=2))
    assert made[-1] == ("h3", "one", "tiny", 256, 2, True)
    job = run(manager, CreateSnapshot(name="one", host="all", cpus=2))
    assert list(job.result["hosts"]) == ["h2"]
    assert job.result["skipped"]["h3"] == "holds it already"
    # deleting without a host deletes it wherever it is
    manager.submit(DeleteSnapshot(name="one"), ADMIN)
    for host in ("h2", "h3"):
        assert "one" not in {g.name for g in manager.agent(host).call("list_snapshots")}


@pytest.mark.parametrize("op,error,text", [
    (CreateSnapshot(name="g", image="nope"), NotFound,
     "no image 'nope' on any host (known: idle, tiny)"),
    (CreateSnapshot(name="g", host="h1"), NoCapacity,
     "host h1 cannot make snapshot 'g' (256 MiB, 1 vCPU): h1 cannot make snapshots (its agent "
     "has no native driver)"),
    (CreateSnapshot(name="g", image="idle", host="h3"), NoCapacity,
     "host h3 cannot make snapshot 'g' (256 MiB, 1 vCPU): h3 has no image 'idle'"),
    (CreateSnapshot(name="g", host="h9"), NotFound, "no host 'h9'"),
    (CreateSnapshot(name="g", memory="1M"), BadRequest, "memory 1M is too small"),
    (CreateSnapshot(name="g", memory="lots"), BadRequest, "lots"),
    (CreateSnapshot(name="g", memory="1T"), NoCapacity, "no host can make snapshot 'g'"),
    (CreateSnapshot(name="taken"), Conflict,
     "snapshot 'taken' exists already on h2 (image tiny, 64 MiB, 1 vCPU): choose another "
     "name, or give a host to make it there too"),
    (CreateSnapshot(name="taken", host="h2", memory="64M"), Conflict,
     "snapshot 'taken' exists already on h2 (image tiny, 64 MiB, 1 vCPU)"),
    (CreateSnapshot(name="taken", host="h3"), Conflict,
     "snapshot 'taken' is another machine on h2 (image tiny, 64 MiB, 1 vCPU), not image tiny, "
     "256 MiB, 1 vCPU: a snapshot name stands for one machine on every host"),
    (DeleteSnapshot(name="nope"), NotFound, "no snapshot 'nope' on any host (known: taken)"),
    (DeleteSnapshot(name="taken", host="h3"), NotFound,
     "no snapshot 'taken' on host h3 (known: none)"),
    (DeleteSnapshot(name="taken", host="h9"), NotFound, "no host 'h9'"),
])
def test_refusals_before_any_job(manager: Manager, made: list, op: object,
                                 error: type[Exception], text: str) -> None:
    run(manager, CreateSnapshot(name="taken", memory="64M"))
    n = len(made)
    with manager.store.session() as s:
        jobs = s.query(Job).count()
    with pytest.raises(error) as exc:
        manager.submit(op, ADMIN)  # type: ignore[arg-type]
    assert text in str(exc.value)
    assert len(made) == n
    with manager.store.session() as s:
        assert s.query(Job).count() == jobs


def test_no_native_host_at_all(tmp_path: Path, made: list) -> None:
    agents = FakeAgents(tmp_path / "agents", ["h1"])
    m = fake_manager(tmp_path, agents)
    with pytest.raises(NoCapacity, match=r"^no host can make snapshot 'g' \(256 MiB, 1 vCPU\): "
                       r"h1 cannot make snapshots \(its agent has no native driver\)$"):
        m.submit(CreateSnapshot(name="g"), ADMIN)


def test_hosts_that_do_not_answer_are_named(manager: Manager, api: dict, made: list,
                                            agents: FakeAgents) -> None:
    run(manager, CreateSnapshot(name="gold", memory="64M", host="all"))
    agents.down.add("h3")
    with manager.store.session() as s:
        s.get(Host, "h1").state = "down"  # type: ignore[union-attr]
    out = api["bob"].get("/snapshots").json()
    assert [g["host"] for g in out["snapshots"]] == ["h2"]
    assert [u["host"] for u in out["unanswered"]] == ["h1", "h3"]
    assert out["unanswered"][0]["error"] == "host is down"
    assert "connection refused" in out["unanswered"][1]["error"]
    assert api["bob"].get("/snapshots", params={"host": "h2"}).json()["unanswered"] == []
    assert api["bob"].get("/snapshots", params={"host": "h9"}).status_code == 404
    # a host that does not answer is not taken for one without the snapshot
    with pytest.raises(NotFound, match=r"no snapshot 'x' on any host \(known: gold\); h1, h3 "
                       "did not answer"):
        manager.submit(DeleteSnapshot(name="x"), ADMIN)
    with pytest.raises(AgentError, match="host h3: .*connection refused"):
        manager.submit(DeleteSnapshot(name="gold", host="h3"), ADMIN)
    with pytest.raises(Conflict, match="host h1 is down: its snapshots cannot be deleted now"):
        manager.submit(DeleteSnapshot(name="gold", host="h1"), ADMIN)


def test_rest_status_codes(api: dict, made: list) -> None:
    admin, bob, gus = api["admin"], api["bob"], api["gus"]
    r = admin.post("/snapshots?wait=10", json={"name": "taken", "memory": "64M"})
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
    r = admin.post("/snapshots", json={"name": "g2", "memory": "64M", "host": "h3"})
    assert r.status_code == 202 and r.json()["kind"] == "create_snapshot", r.text
    for who, method, path, body, status, text in [
        (admin, "post", "/snapshots", {"name": "g", "image": "nope"}, 404, "no image 'nope'"),
        (admin, "post", "/snapshots", {"name": "Bad Name"}, 422, "name: String should match"),
        (admin, "post", "/snapshots", {"name": "g", "cpus": 0}, 422, "cpus:"),
        (admin, "post", "/snapshots", {"name": "g", "memory": "1M"}, 400, "too small"),
        (admin, "post", "/snapshots", {"name": "g", "host": "h1"}, 409,
         "its agent has no native driver"),
        (admin, "post", "/snapshots", {"name": "g", "host": "h9"}, 404, "no host 'h9'"),
        (admin, "post", "/snapshots", {"name": "taken"}, 409, "exists already on h2"),
        (admin, "post", "/snapshots", {"name": "g", "extra": 1}, 422, "extra"),
        (bob, "post", "/snapshots", {"name": "g"}, 403, "needs role admin"),
        (gus, "post", "/snapshots", {"name": "g"}, 403, "needs role admin"),
        (admin, "delete", "/snapshots/nope", None, 404, "no snapshot 'nope' on any host"),
        (admin, "delete", "/snapshots/Bad!", None, 400, "delete_snapshot: name: String should"),
        (admin, "delete", "/snapshots/taken?host=h9", None, 404, "no host 'h9'"),
        (bob, "delete", "/snapshots/taken", None, 403, "needs role admin"),
    ]:
        r = getattr(who, method)(path, json=body) if body is not None else \
            getattr(who, method)(path)
        assert r.status_code == status, (path, body, r.text)
        assert text in r.json()["error"], (path, body, r.json())
