"""The manager: store + job runner + agent clients + monitor, and the one door for operations.

``Manager(store, config).start()``; then every front end calls
``manager.submit(op, actor)`` → job id (``wait=True`` to block until it ends). Inline
operations (users, hosts, tokens) run at once and their errors reach the caller.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from vnix.cluster.agents import AgentClient
from vnix.cluster.auth import (
    JOIN_TOKEN_SETTING,
    Actor,
    Role,
    hash_password,
    new_password,
    new_token,
    token_hash,
)
from vnix.cluster.errors import Forbidden, NotFound
from vnix.cluster.jobs import JobRunner
from vnix.cluster.operations import OpContext, Operation
from vnix.cluster.scheduler import HostLoad, Overcommit
from vnix.cluster.store import Store
from vnix.cluster.tables import Host, Image, Job, User, Vm

if TYPE_CHECKING:
    from vnix.cluster.leader import JobIntake, Leadership

log = logging.getLogger(__name__)


class ManagerConfig(BaseModel):
    overcommit: Overcommit = Field(default_factory=Overcommit)
    workers: int = Field(4, ge=1, le=64)
    monitor_interval_s: float = Field(5.0, gt=0)
    down_after: int = Field(2, ge=1, description="missed polls before a host is down")
    metrics_retention_s: int = Field(86400, ge=60)
    monitor: bool = True  # the collector + reconcile thread
    elect: bool = True  # on PostgreSQL, run jobs and the monitor only while elected leader


class Manager:
    def __init__(self, store: Store, config: ManagerConfig | None = None,
                 http_factory: Callable[[str], httpx.Client] | None = None) -> None:
        from vnix.cluster import ops_admin, ops_snapshot, ops_vm  # noqa: F401  (register the ops)
        from vnix.cluster.monitor import Monitor

        self.store = store
        self.config = config or ManagerConfig()
        self.runner = JobRunner(self, self.config.workers)
        self.monitor = Monitor(self)
        self._http_factory = http_factory
        self._agents: dict[str, tuple[str, str, AgentClient]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.started = False
        self._join_hash: str | None = None
        self.leadership: Leadership | None = None  # set by start() on PostgreSQL
        self.intake: JobIntake | None = None

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve; run jobs and the monitor here, or (on PostgreSQL, ``config.elect``) only
        while this manager is the elected leader (vnix.cluster.leader)."""
        from vnix.cluster.leader import JobIntake, Leadership, elects

        self.started = True
        if self.config.elect and elects(self.store.url):
            self.intake = JobIntake(self)
            self.leadership = Leadership(self.store.url, self._lead, self._follow)
            self.leadership.start()
        else:
            self._lead()

    def _lead(self) -> None:
        self._orphaned_creations()
        self.runner.start()
        if self.config.monitor:
            self.monitor.start()
        if self.intake is not None:
            self.intake.start()

    def _follow(self) -> None:
        """No longer the leader: stop the workers and the monitor, ready to lead again."""
        from vnix.cluster.monitor import Monitor

        if self.intake is not None:
            self.intake.stop()
        self.monitor.stop()
        self.runner.stop()
        self.monitor, self.runner = Monitor(self), JobRunner(self, self.config.workers)

    def stop(self) -> None:
        if self.leadership is not None:
            self.leadership.stop()  # a leader steps down (_follow) before the lock goes
            self.leadership = None
        else:
            self.monitor.stop()
            self.runner.stop()
        for _, _, client in self._agents.values():
            client.close()
        self._agents.clear()
        self.started = False

    def _orphaned_creations(self) -> None:
        """VMs left ``creating`` by a manager that stopped mid-job and whose job will not run
        again become ``missing``: the reconcile loop makes them from their spec."""
        with self.store.session() as s:
            queued: set[str] = set()
            for op in s.scalars(select(Job.op).where(Job.state == "queued")):
                queued.update(v["name"] for v in op.get("vms", []))
                if op.get("kind") == "create_vm":
                    queued.add(op["name"])
            for vm in s.scalars(select(Vm).where(Vm.actual == "creating")):
                if vm.name not in queued:
                    vm.actual, vm.detail = "missing", "its creation was interrupted"

    # -- operations -----------------------------------------------------------------------
    def submit(self, op: Operation, actor: Actor, wait: bool = False,
               timeout: float | None = None) -> int:
        """Check ``op`` for ``actor``, record it as a job, and run it (inline ones at once)."""
        if not op.allowed(actor):
            raise Forbidden(f"{actor.role.value} {actor.name!r} may not {op.describe()}")
        with self.store.session() as s:
            op.check(OpContext(self, s, actor))
            job = Job(kind=op.kind, op=op.stored(), target=op.target(),
                      owner=actor.name, state="queued", log="", error="")
            s.add(job)
            s.flush()
            job_id = job.id
        if op.inline:
            self.runner.execute(job_id, op=op, reraise=True)
        else:
            self.runner.enqueue(job_id)
            if wait:
                self.runner.wait(job_id, timeout)
        return job_id

    def job_result(self, job_id: int) -> dict[str, Any] | None:
        with self.store.session() as s:
            job = s.get(Job, job_id)
            return job.result if job else None

    def vm_lock(self, name: str) -> threading.Lock:
        """The lock jobs hold while they act on VM ``name``; the reconcile loop skips a VM
        whose lock is taken."""
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    # -- agents ---------------------------------------------------------------------------
    def agent(self, host: str) -> AgentClient:
        with self.store.session() as s:
            row = s.get(Host, host)
            if row is None:
                raise NotFound(f"no host {host!r}")
            url, token = row.url, row.token
        return self.agent_for(host, url, token)

    def agent_for(self, host: str, url: str, token: str) -> AgentClient:
        with self._guard:
            cached = self._agents.get(host)
            if cached and cached[:2] == (url, token):
                return cached[2]
            http = self._http_factory(url) if self._http_factory else None
            client = AgentClient(host, url, token, http)
            self._agents[host] = (url, token, client)
            return client

    # -- what the scheduler needs ---------------------------------------------------------
    def host_loads(self, s: Any) -> list[HostLoad]:
        loads = {h.name: HostLoad(h.name, h.state == "up", h.cpus, h.memory_mib,
                                  drivers=set(h.drivers or ()))
                 for h in s.scalars(select(Host))}
        for host, name in s.execute(select(Image.host, Image.name)):
            if host in loads:
                loads[host].images.add(name)
        for vm in s.scalars(select(Vm).where(Vm.desired != "deleted", Vm.host.is_not(None))):
            if vm.host in loads:
                loads[vm.host].add(vm.cpus, vm.memory_mib,
                                   group_key(vm.cluster, vm.group) if vm.spread else None)
        return list(loads.values())

    def usage(self, s: Any, owner: str) -> tuple[int, int, int]:
        return usage(s, owner)

    def usage_of(self, owner: str) -> tuple[int, int, int]:
        with self.store.session() as s:
            return usage(s, owner)

    # -- first start ----------------------------------------------------------------------
    def ensure_admin(self, password: str | None = None) -> str | None:
        """Create user ``admin`` if there is no admin yet; returns the password if it was
        generated here (to be printed once), None if an admin existed or ``password`` given."""
        password = password or os.environ.get("VNIX_ADMIN_PASSWORD") or None
        with self.store.session() as s:
            if s.scalars(select(User).where(User.role == Role.ADMIN.value)).first():
                return None
            generated = password is None
            password = password or new_password()
            s.add(User(name="admin", password_hash=hash_password(password),
                       role=Role.ADMIN.value))
        return password if generated else None

    def new_join_token(self, token: str | None = None) -> str:
        """Make (or set) the token agents use with ``vnix agent --join``; only its hash is kept."""
        token = token or new_token()
        self.store.set_setting(JOIN_TOKEN_SETTING, token_hash(token))
        self._join_hash = token_hash(token)
        return token

    def join_token_hash(self) -> str | None:
        if self._join_hash is None:
            self._join_hash = self.store.get_setting(JOIN_TOKEN_SETTING) or ""
        return self._join_hash or None


def usage(s: Any, owner: str) -> tuple[int, int, int]:
    """(VMs, vCPUs, MiB) that ``owner``'s VMs count against the quota."""
    n, cpus, mem = s.execute(
        select(func.count(Vm.name), func.coalesce(func.sum(Vm.cpus), 0),
               func.coalesce(func.sum(Vm.memory_mib), 0))
        .where(Vm.owner == owner, Vm.desired != "deleted")).one()
    return int(n), int(cpus), int(mem)


def group_key(cluster: str | None, group: str | None) -> str | None:
    if not group:
        return None
    return f"{cluster}/{group}" if cluster else group
