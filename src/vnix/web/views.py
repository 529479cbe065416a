"""What each page shows, read from the store in a few queries (no agent is asked while a
page renders: the collector keeps the store current; the golden snapshots are the exception,
the agents own them and the snapshots page asks them as ``GET /api/v1/snapshots`` does).

Each function returns plain typed rows for one page; the templates only lay them out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vnix.cluster.auth import Actor, Role
from vnix.cluster.manager import usage
from vnix.cluster.metrics import figure
from vnix.cluster.tables import Cluster, Host, Image, Job, MetricSample, User, Vm, utcnow

ACTIVE_JOBS = ("queued", "running")
BAD_VM_STATES = frozenset({"crashed", "missing", "unknown"})
VM_ACTIONS = ("start", "stop", "pause", "resume", "suspend")


@dataclass(frozen=True)
class Alert:
    level: str  # error | warning
    text: str
    link: str


@dataclass
class HostRow:
    name: str
    state: str
    cpus: int
    memory_mib: int
    memory_available_mib: int
    cpu_percent: float
    drivers: list[str]
    detail: str
    last_seen: datetime | None
    vms: int = 0
    used_cpus: int = 0
    used_memory_mib: int = 0


@dataclass
class ClusterRow:
    name: str
    owner: str
    state: str
    nodes: int = 0
    running: int = 0
    groups: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Overview:
    hosts: list[HostRow]
    vms: list[Vm]
    clusters: list[ClusterRow]
    jobs: list[Job]
    alerts: list[Alert]


def host_rows(s: Session, name: str | None = None) -> list[HostRow]:
    q = select(Host).order_by(Host.name)
    if name is not None:
        q = q.where(Host.name == name)
    rows = {h.name: HostRow(h.name, h.state, h.cpus, h.memory_mib, h.memory_available_mib,
                            h.cpu_percent, list(h.drivers or []), h.detail, h.last_seen)
            for h in s.scalars(q)}
    used = (select(Vm.host, func.count(Vm.name), func.coalesce(func.sum(Vm.cpus), 0),
                   func.coalesce(func.sum(Vm.memory_mib), 0))
            .where(Vm.desired != "deleted", Vm.host.is_not(None)).group_by(Vm.host))
    for host, n, cpus, mem in s.execute(used):
        if host in rows:
            rows[host].vms, rows[host].used_cpus, rows[host].used_memory_mib = n, cpus, mem
    return list(rows.values())


def visible_vms(s: Session, actor: Actor, **where: str) -> list[Vm]:
    q = select(Vm).order_by(Vm.name)
    for col, value in where.items():
        q = q.where(getattr(Vm, col) == value)
    if not actor.is_admin and actor.role is not Role.GUEST:
        q = q.where(Vm.owner == actor.name)
    return list(s.scalars(q))


def cluster_rows(s: Session, actor: Actor) -> list[ClusterRow]:
    rows = {c.name: ClusterRow(c.name, c.owner, c.state,
                               groups=[(g.name, g.count) for g in sorted(c.groups,
                                                                         key=lambda g: g.id)])
            for c in s.scalars(select(Cluster).order_by(Cluster.name))
            if actor.may_see(c.owner)}
    counts = (select(Vm.cluster, Vm.actual, func.count(Vm.name))
              .where(Vm.cluster.is_not(None)).group_by(Vm.cluster, Vm.actual))
    for cluster, actual, n in s.execute(counts):
        if cluster in rows:
            rows[cluster].nodes += n
            rows[cluster].running += n if actual == "running" else 0
    return list(rows.values())


def recent_jobs(s: Session, actor: Actor, limit: int = 15) -> list[Job]:
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if actor.role is Role.USER:
        q = q.where(Job.owner == actor.name)
    active = select(Job).where(Job.state.in_(ACTIVE_JOBS)).order_by(Job.id.desc())
    if actor.role is Role.USER:
        active = active.where(Job.owner == actor.name)
    seen: dict[int, Job] = {j.id: j for j in s.scalars(active)}
    for j in s.scalars(q):
        seen.setdefault(j.id, j)
    return sorted(seen.values(), key=lambda j: j.id, reverse=True)


def alerts(hosts: list[HostRow], vms: list[Vm], jobs: list[Job]) -> list[Alert]:
    out = [Alert("error", f"host {h.name} is down: {h.detail or 'no answer'}",
                 f"/hosts/{h.name}") for h in hosts if h.state != "up"]
    for vm in vms:
        if vm.actual in BAD_VM_STATES and vm.desired != "deleted":
            out.append(Alert("error" if vm.actual == "crashed" else "warning",
                             f"VM {vm.name} is {vm.actual}"
                             + (f": {vm.detail}" if vm.detail else ""), f"/vms/{vm.name}"))
    recent = utcnow() - timedelta(hours=1)
    for job in jobs:
        finished = job.finished
        if job.state == "failed" and finished and _utc(finished) > recent:
            out.append(Alert("warning", f"job {job.id} ({job.kind} {job.target}) failed: "
                             f"{job.error[:160]}", f"#job-{job.id}"))
    return out


def overview(s: Session, actor: Actor) -> Overview:
    hosts = host_rows(s)
    vms = visible_vms(s, actor)
    jobs = recent_jobs(s, actor)
    return Overview(hosts, vms, cluster_rows(s, actor), jobs, alerts(hosts, vms, jobs))


def metrics_of(s: Session, kind: str, name: str) -> list[str]:
    """The metrics a host or VM has samples of, in the figures' order (graphs to draw)."""
    found = set(s.scalars(select(MetricSample.metric).distinct().where(
        MetricSample.kind == kind, MetricSample.name == name)))
    order = {"cpu_percent": 0, "cpu_time_s": 0, "memory_used_mib": 1, "memory_mib": 1,
             "rss_mib": 2, "balloon_mib": 3}
    return sorted(found, key=lambda m: (order.get(m, 5 if m.startswith("exits_") else 4), m))


def graphs_of(s: Session, kind: str, name: str) -> list[tuple[str, str, str]]:
    """(metric, title, unit) of each graph a host or VM page draws."""
    skip = {"vms"} if kind == "host" else set()
    return [(m, (f := figure(m)).title, f.unit) for m in metrics_of(s, kind, name)
            if m not in skip]


def user_rows(s: Session) -> list[tuple[User, tuple[int, int, int]]]:
    return [(u, usage(s, u.name)) for u in s.scalars(select(User).order_by(User.name))]


def image_names(s: Session) -> list[str]:
    """The images some host has (a golden snapshot's image is one of them)."""
    return sorted(set(s.scalars(select(Image.name).distinct())))


def host_names(s: Session) -> list[str]:
    return list(s.scalars(select(Host.name).order_by(Host.name)))


def size_text(size: int) -> str:
    """Bytes as a person reads them: 4.0 KiB, 12.5 MiB, 1.2 GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # not reached


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
