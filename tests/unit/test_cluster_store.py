"""The store's schema comes from the migrations and matches the ORM; the agent call table
matches the agent's routes; calls to many hosts give one result per host."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from vnix.cluster.agents import CALLS, AgentClient, call_many
from vnix.cluster.errors import AgentError, AgentUnreachable
from vnix.cluster.store import Store, sqlite_url
from vnix.cluster.tables import Base
from vnix.cluster.testing import AGENT_TOKEN, FakeAgents


def test_migrations_build_exactly_the_orm_schema_and_are_idempotent(tmp_path: Path) -> None:
    store = Store(sqlite_url(tmp_path / "m.db"))
    store.migrate()  # a second time: nothing to do, nothing breaks
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.set_setting("k", "v1")
    store.set_setting("k", "v2")
    assert Store(sqlite_url(tmp_path / "m.db")).get_setting("k") == "v2"


def test_a_bad_database_url_is_one_line(tmp_path: Path) -> None:
    from vnix.errors import UsageError

    with pytest.raises(UsageError, match="cannot use database 'nosuchdb://x'"):
        Store("nosuchdb://x")


def test_the_call_table_matches_the_agents_routes(tmp_path: Path) -> None:
    agents = FakeAgents(tmp_path, ["h1"])
    routes = agents.clients["h1"].app.openapi()["paths"]  # type: ignore[attr-defined]
    for name, call in CALLS.items():
        assert call.path in routes, name
        assert call.method.lower() in routes[call.path], name


def test_many_hosts_give_one_result_each(tmp_path: Path) -> None:
    agents = FakeAgents(tmp_path, ["h1", "h2", "h3"])
    agents.down.add("h2")
    clients = {h: AgentClient(h, agents.url(h), AGENT_TOKEN, agents.http_factory(agents.url(h)))
               for h in ("h1", "h2", "h3")}
    results = call_many(clients, "host")
    assert [(h, r.ok) for h, r in results.items()] == [("h1", True), ("h2", False), ("h3", True)]
    assert "connection refused" in results["h2"].error
    assert results["h1"].payload.drivers == ["fake"]
    missing = call_many(clients, "vm_info", name="nope")
    assert {r.status for r in missing.values()} == {404, 0}
    with pytest.raises(AgentUnreachable, match="host h2: GET /host"):
        clients["h2"].call("host")
    bad = AgentClient("h1", agents.url("h1"), "wrong", agents.http_factory(agents.url("h1")))
    with pytest.raises(AgentError, match="missing or wrong bearer token") as e:
        bad.call("list_vms")
    assert e.value.status == 401


def test_the_same_schema_and_a_batch_on_postgresql(tmp_path: Path) -> None:
    from vnix.cluster.auth import SYSTEM, Actor, Role
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.ops_admin import RegisterHost
    from vnix.cluster.ops_vm import CreateVm, CreateVms
    from vnix.cluster.vcluster.testlab import Postgres, pg_bindir

    if pg_bindir() is None:
        pytest.skip("needs PostgreSQL's binaries")
    with Postgres() as pg:
        store = Store(pg.url)
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        agents = FakeAgents(tmp_path, ["h1", "h2"])
        m = Manager(store, ManagerConfig(monitor=False), http_factory=agents.http_factory)
        m.ensure_admin("admin-password")
        m.start()
        try:
            for h in ("h1", "h2"):
                m.submit(RegisterHost(name=h, url=agents.url(h), token=AGENT_TOKEN), SYSTEM)
            job_id = m.submit(CreateVms(vms=[CreateVm(name=f"p{i}", memory="32M")
                                             for i in range(4)]), Actor("admin", Role.ADMIN))
            job = m.runner.wait(job_id, 30)
            assert job.state == "succeeded", job.error
            assert sorted(job.result["vms"].values()) == ["h1", "h1", "h2", "h2"]
        finally:
            m.stop()
            store.close()
