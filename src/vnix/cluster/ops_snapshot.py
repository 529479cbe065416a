"""Golden snapshots through the manager: list them on every host, make one, delete one.

A golden snapshot (:mod:`vnix.node.snapshots`) is a booted VM of an image saved once on a
host; clones of it (``CreateVm.snapshot``) start in milliseconds on the native driver. The
agents own them: the manager keeps no table of snapshots, it asks the agents that are up
(:func:`holdings`) and says which did not answer.

Who may: like images, golden snapshots are host resources every user's clones share (disk,
a warm clone server per snapshot), so making and deleting them is for administrators
(``min_role`` ADMIN); anyone logged in may list them (a user sees the names of the clones
that are their own VMs, and how many there are in all).

* :class:`CreateSnapshot` (a job: the template boots and is saved, seconds) on one host the
  scheduler picks among those up with the native driver and the image, on the host asked
  for, or with ``host="all"`` on every such host (those holding the same snapshot already
  are skipped). Refused before any job: an unknown image (404), no host that can make it
  (409, host by host), a name taken (409).
* :class:`DeleteSnapshot` (inline) on one host or on every host holding it: 404 unknown,
  409 while clones use it (naming them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr
from sqlalchemy import select
from sqlalchemy.orm import Session

from vnix.cluster.agents import call_many
from vnix.cluster.auth import Role
from vnix.cluster.errors import (
    AgentError,
    Conflict,
    NoCapacity,
    NotFound,
)
from vnix.cluster.operations import JobContext, OpContext, Operation, register, summarize
from vnix.cluster.ops_vm import guest_memory_mib
from vnix.cluster.scheduler import Request, why_not
from vnix.cluster.tables import Host, Image
from vnix.node import models as agent
from vnix.node.images import NAME_RE
from vnix.vmm.config import MAX_VCPUS

ALL = "all"


@dataclass
class Holdings:
    """What the agents said: ``snapshots[host][name]``, and the hosts that did not answer
    (or were not asked: down) with the reason."""

    snapshots: dict[str, dict[str, agent.SnapshotOut]] = field(default_factory=dict)
    silent: dict[str, str] = field(default_factory=dict)

    def holders(self, name: str) -> dict[str, agent.SnapshotOut]:
        return {h: snaps[name] for h, snaps in sorted(self.snapshots.items()) if name in snaps}

    def names(self) -> list[str]:
        return sorted({n for snaps in self.snapshots.values() for n in snaps})

    def silent_note(self) -> str:
        return f"; {', '.join(sorted(self.silent))} did not answer" if self.silent else ""


def holdings(manager: Any, s: Session, host: str | None = None) -> Holdings:
    """Ask the agents that are up (or only ``host``) for their golden snapshots."""
    q = select(Host).order_by(Host.name)
    if host is not None:
        if s.get(Host, host) is None:
            raise NotFound(f"no host {host!r}")
        q = q.where(Host.name == host)
    out = Holdings()
    up = {}
    for h in s.scalars(q):
        if h.state == "up":
            up[h.name] = manager.agent_for(h.name, h.url, h.token)
        else:
            out.silent[h.name] = f"host is {h.state}"
    for h, r in call_many(up, "list_snapshots").items():
        if r.ok:
            out.snapshots[h] = {g.name: g for g in r.payload}
        else:
            out.silent[h] = r.error
    return out


def machine(g: agent.SnapshotOut) -> str:
    return f"image {g.image}, {g.memory_mib} MiB, {g.cpus} vCPU"


@register
class CreateSnapshot(Operation):
    """Make golden snapshot ``name`` of ``image``: a template VM boots on the native driver
    to its readiness line and is saved (seconds)."""

    kind: Literal["create_snapshot"] = "create_snapshot"
    name: str = Field(pattern=NAME_RE.pattern, description="the snapshot's name (a-z, 0-9, "
                      "'.', '_', '-'; clones name it: POST /vms with 'snapshot')")
    image: str = Field("tiny", description="the image the template boots (an image with a "
                       "kernel, on the host)")
    memory: str = Field("256M", description="the template's memory, so every clone's")
    cpus: int = Field(1, ge=1, le=MAX_VCPUS, description="the template's vCPUs, so every "
                      "clone's")
    host: str | None = Field(None, description="the host to make it on (default: one the "
                             "scheduler picks among the hosts up with the native driver and "
                             "the image); 'all': every such host")
    ready: str | None = Field(None, description="console text the template prints when it "
                              "is ready to be saved (default: the agent's readiness lines)")
    vsock: bool = Field(True, description="give the template (so each clone) a vsock")
    min_role: ClassVar[Role] = Role.ADMIN

    def describe(self) -> str:
        return f"create golden snapshot {self.name}"

    def target(self) -> str:
        return f"snapshot/{self.name}"

    def memory_mib(self) -> int:
        return guest_memory_mib(self.memory)

    def plan(self, manager: Any, s: Session) -> tuple[list[str], dict[str, str]]:
        """The hosts to make it on, and (for ``all``) those left out with the reason.
        Raises what refuses the request."""
        mib = self.memory_mib()
        if s.query(Image).filter(Image.name == self.image).count() == 0:
            known = sorted({n for (n,) in s.query(Image.name).distinct()})
            raise NotFound(f"no image {self.image!r} on any host "
                           f"(known: {', '.join(known) or 'none'})")
        pinned = self.host if self.host not in (None, ALL) else None
        if pinned is not None and s.get(Host, pinned) is None:
            raise NotFound(f"no host {pinned!r}")
        have = holdings(manager, s)
        held = have.holders(self.name)
        want = (self.image, mib, self.cpus)
        if self.host is None and held:
            raise Conflict(f"snapshot {self.name!r} exists already on "
                           + ", ".join(f"{h} ({machine(g)})" for h, g in held.items())
                           + ": choose another name, or give a host to make it there too")
        if pinned is not None and pinned in held:
            raise Conflict(f"snapshot {self.name!r} exists already on {pinned} "
                           f"({machine(held[pinned])})")
        other = {h: g for h, g in held.items() if (g.image, g.memory_mib, g.cpus) != want}
        if other:
            raise Conflict(f"snapshot {self.name!r} is another machine on "
                           + ", ".join(f"{h} ({machine(g)})" for h, g in other.items())
                           + f", not image {self.image}, {mib} MiB, {self.cpus} vCPU: a "
                           "snapshot name stands for one machine on every host")
        req = Request(self.cpus, mib, self.image, host=pinned, clone=True)
        what = f"snapshot {self.name!r} ({mib} MiB, {self.cpus} vCPU)"
        loads = [h for h in sorted(manager.host_loads(s), key=lambda h: h.name)
                 if pinned in (None, h.name)]
        fits, reasons, skipped = [], [], {}
        for h in loads:
            if h.name in held:  # "all": holds the same snapshot already
                skipped[h.name] = "holds it already"
                continue
            why = why_not(h, req, manager.config.overcommit)
            if why is not None:
                reason = why.replace("cannot make clones", "cannot make snapshots")
                reasons.append(reason)
                skipped[h.name] = reason.removeprefix(f"{h.name} ")
            else:
                fits.append(h)
        if not fits:
            if pinned is not None:
                raise NoCapacity(f"host {pinned} cannot make {what}: {', '.join(reasons)}")
            if not loads:
                raise NoCapacity(f"no host can make {what}: no hosts are registered")
            if held:  # "all"
                raise Conflict(f"snapshot {self.name!r} exists already on {', '.join(held)}"
                               + (f"; no other host can make it: {', '.join(reasons)}"
                                  if reasons else ""))
            raise NoCapacity(f"no host can make {what}: {', '.join(reasons)}")
        if self.host == ALL:
            return [h.name for h in fits], skipped
        oc = manager.config.overcommit
        best = max(fits, key=lambda h: (h.free_memory_mib(oc), h.free_cpus(oc)))
        return [best.name], {}

    def check(self, ctx: OpContext) -> None:
        targets, _ = self.plan(ctx.manager, ctx.session)
        if self.host is None:
            self.host = targets[0]  # the scheduler's choice is the job's (stored in its row)
        self.memory = f"{self.memory_mib()}M"

    def request(self) -> agent.CreateSnapshot:
        return agent.CreateSnapshot(name=self.name, image=self.image, memory=self.memory,
                                    cpus=self.cpus, ready=self.ready, vsock=self.vsock)

    def make(self, ctx: JobContext, host: str) -> dict[str, Any]:
        ctx.check_cancelled()
        out: agent.SnapshotOut = ctx.agent(host).call("create_snapshot", self.request())
        ctx.log(f"{host}: snapshot {self.name} of {out.image} saved: "
                f"{out.size / 2**20:.1f} MiB (boot {out.boot_s:.2f} s, save {out.save_s:.2f} s)")
        return {"size": out.size, "boot_s": out.boot_s, "save_s": out.save_s}

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        machine_ = f"image {self.image}, {self.memory}, {self.cpus} vCPU"
        if self.host != ALL:
            host = self.host or ""
            ctx.progress(0.05, f"{host}: booting a template VM ({machine_}) to save it")
            return {"snapshot": self.name, "hosts": {host: self.make(ctx, host)}}
        with ctx.session() as s:
            targets, skipped = self.plan(ctx.manager, s)
        for h, why in sorted(skipped.items()):
            ctx.log(f"{h}: skipped: {why}")
        ctx.log(f"booting a template VM ({machine_}) on {', '.join(targets)} to save it")
        results = ctx.parallel(targets, lambda h: self.make(ctx, h), lambda h: h)
        summarize(results, lambda h: h)
        return {"snapshot": self.name, "hosts": {h: r for h, r, _ in results},
                "skipped": skipped}


@register
class DeleteSnapshot(Operation):
    """Delete golden snapshot ``name`` on ``host``, or on every host that holds it."""

    kind: Literal["delete_snapshot"] = "delete_snapshot"
    name: str = Field(pattern=NAME_RE.pattern)
    host: str | None = Field(None, description="only on this host (default: every host "
                             "holding it)")
    min_role: ClassVar[Role] = Role.ADMIN
    inline: ClassVar[bool] = True
    _holders: list[str] = PrivateAttr(default_factory=list)

    def describe(self) -> str:
        return f"delete golden snapshot {self.name}"

    def target(self) -> str:
        return f"snapshot/{self.name}"

    def holders(self, manager: Any, s: Session) -> tuple[list[str], Holdings]:
        if self.host is not None:
            row = s.get(Host, self.host)
            if row is None:
                raise NotFound(f"no host {self.host!r}")
            if row.state != "up":
                raise Conflict(f"host {self.host} is {row.state}: its snapshots cannot be "
                               "deleted now")
        have = holdings(manager, s, self.host)
        held = have.holders(self.name)
        if not held:
            if self.host is not None and self.host in have.silent:
                raise AgentError(self.host, have.silent[self.host])
            where = f"host {self.host}" if self.host else "any host"
            raise NotFound(f"no snapshot {self.name!r} on {where} (known: "
                           f"{', '.join(have.names()) or 'none'})" + have.silent_note())
        used = {h: g.used_by for h, g in held.items() if g.used_by}
        if used:
            raise Conflict(f"snapshot {self.name!r} is used by "
                           + "; ".join(f"VM(s) {', '.join(sorted(vms))} on {h}"
                                       for h, vms in used.items())
                           + ": delete those VMs first")
        return list(held), have

    def check(self, ctx: OpContext) -> None:
        self._holders, _ = self.holders(ctx.manager, ctx.session)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        hosts = self._holders
        if not hosts:  # not the object check() saw (a job run again from its row)
            with ctx.session() as s:
                hosts, _ = self.holders(ctx.manager, s)
        results = []
        for h in hosts:
            try:
                ctx.agent(h).call("delete_snapshot", name=self.name)
                ctx.log(f"{h}: snapshot {self.name} deleted")
                results.append((h, None, None))
            except AgentError as exc:
                if exc.status == 404:  # gone already
                    results.append((h, None, None))
                    continue
                ctx.log(f"{h}: {exc.message}")
                results.append((h, None, exc))
        failed = [e for _, _, e in results if e is not None]
        if len(failed) == 1 and len(hosts) == 1:
            raise failed[0]  # one host: its own error (a 409 from the agent stays a 409)
        summarize(results, lambda h: h)
        return {"snapshot": self.name, "hosts": hosts}
