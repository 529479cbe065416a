"""VM operations: create (one or a batch), start, stop, pause, resume, suspend, delete.

Each checks the VM's *actual* state (as the agent last reported it) against the hypervisor's
own action table (``vnix.hypervisor.state.ACTIONS``), so a wrong state is a 409 at once, and
records the new *desired* state; the job then asks the VM's agent.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from vnix.cluster.agents import call_many
from vnix.cluster.auth import Actor
from vnix.cluster.errors import (
    AgentError,
    BadRequest,
    Cancelled,
    Conflict,
    Forbidden,
    NoCapacity,
    NotFound,
    QuotaExceeded,
)
from vnix.cluster.operations import JobContext, OpContext, Operation, register, summarize
from vnix.cluster.scheduler import Request, place
from vnix.cluster.tables import Host, Image, User, Vm
from vnix.errors import VnixError
from vnix.hypervisor.state import ACTIONS
from vnix.node import models as agent
from vnix.node.images import NAME_RE
from vnix.vmm.config import MAX_VCPUS, MIN_MEMORY_MIB, parse_size_mib

VM_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"
SNAPSHOT_DOC = (
    "make the VM a clone of this golden snapshot (a booted VM of an image saved once, "
    "vnix.node.snapshots): RAM shared copy-on-write with the snapshot, on the native driver. "
    "It is placed on a host that holds the snapshot and can clone (or refused, host by host, "
    "with the reason), and it is the snapshot's machine: 'image', 'memory' and 'cpus' are "
    "the snapshot's, so leave them out (given, they must equal the snapshot's: 'image' then "
    "also picks among hosts whose snapshots of that name differ); 'cmdline' and 'disk_image' "
    "cannot be given; 'driver' is native or left out. 'nics', 'host' and 'start' work as for "
    "any VM. Unknown snapshot: 404.")


def guest_memory_mib(memory: str) -> int:
    """A guest's memory size (``256M``, ``1G``) in MiB; a bad or too small one is a 400."""
    try:
        mib = parse_size_mib(memory)
    except VnixError as exc:
        raise BadRequest(str(exc)) from None
    if mib < MIN_MEMORY_MIB:
        raise BadRequest(f"memory {memory} is too small (at least {MIN_MEMORY_MIB}M)")
    return mib


def clone_driver(driver: str | None, what: str) -> str:
    """The driver clones of a golden snapshot run on (``what`` names the request)."""
    if driver not in (None, "native"):
        raise BadRequest(f"{what} makes clones on the native driver, not {driver!r}")
    return "native"


def visible_vm(s: Session, actor: Actor, name: str, touch: bool = False) -> Vm:
    """The VM ``name`` if ``actor`` may see it (NotFound otherwise: no leaking names) and,
    with ``touch``, act on it (Forbidden otherwise)."""
    vm = s.get(Vm, name)
    if vm is None or not actor.may_see(vm.owner):
        raise NotFound(f"no VM {name!r}")
    if touch and not actor.may_touch(vm.owner):
        raise Forbidden(f"{actor.role.value} {actor.name!r} may not change VM {name!r} "
                        f"(owned by {vm.owner})")
    return vm


def record(s: Session, name: str, out: agent.VmOut) -> None:
    vm = s.get(Vm, name)
    if vm is not None:
        vm.actual, vm.detail = out.state, out.detail


@register
class CreateVm(Operation):
    kind: Literal["create_vm"] = "create_vm"
    name: str = Field(pattern=VM_NAME)
    image: str = "tiny"
    disk_image: str | None = None
    memory: str = "256M"
    cpus: int = Field(1, ge=1, le=MAX_VCPUS)
    driver: str | None = None
    cmdline: str | None = None
    nics: list[agent.NicRequest] = []
    start: bool = True
    host: str | None = Field(None, description="pin to this host (still checked)")
    cluster: str | None = None
    group: str | None = None
    anti_affinity: bool = Field(False, description="no two VMs of this group on one host")
    owner: str | None = Field(None, description="admins may create VMs for others")
    snapshot: str | None = Field(None, pattern=NAME_RE.pattern, description=SNAPSHOT_DOC)
    make_snapshot: bool = Field(False, description="with 'snapshot': the chosen host makes the "
                                "snapshot from 'image' (a template VM of 'memory' and 'cpus' "
                                "booted to its readiness line) if it has none of that name, so "
                                "any host with the image will do (cluster groups with "
                                "source=\"snapshot\")")

    def describe(self) -> str:
        return f"create VM {self.name}"

    def target(self) -> str:
        return f"vm/{self.name}"

    def memory_mib(self) -> int:
        return guest_memory_mib(self.memory)

    def check(self, ctx: OpContext) -> None:
        s, actor = ctx.session, ctx.actor
        mib = self.memory_mib()
        owner = self.owner or actor.name
        if owner != actor.name and not actor.is_admin:
            raise Forbidden(f"only an admin may create VMs for {owner!r}")
        user = s.get(User, owner)
        if user is None:
            raise NotFound(f"no user {owner!r}")
        if s.get(Vm, self.name) is not None:
            raise Conflict(f"VM {self.name!r} exists already")
        if self.group and not self.cluster and "/" in self.group:
            raise BadRequest("a group name may not contain '/'")
        holders: set[str] | None = None  # the hosts with the snapshot (None: any may make it)
        if self.make_snapshot and not self.snapshot:
            raise BadRequest("'make_snapshot' needs 'snapshot' (the snapshot's name)")
        if self.snapshot:
            self.driver = clone_driver(self.driver, f"snapshot {self.snapshot!r}")
            if not self.make_snapshot:
                holders = self.snapshot_holders(ctx)
                mib = self.memory_mib()
        check_quota(ctx, user, 1, self.cpus, mib)
        if s.query(Image).filter(Image.name.in_([i for i in (self.image, self.disk_image)
                                                 if i])).count() == 0:
            known = sorted({n for (n,) in s.query(Image.name).distinct()})
            raise NotFound(f"no image {self.image!r} on any host "
                           f"(known: {', '.join(known) or 'none'})")
        from vnix.cluster.manager import group_key

        key = group_key(self.cluster, self.group) if self.anti_affinity else None
        loads = ctx.manager.host_loads(s)
        for h in loads:
            if holders is not None and h.name in holders:
                h.snapshots.add(self.snapshot or "")
        host = place(Request(self.cpus, mib, self.image, key, self.host,
                             snapshot=self.snapshot if holders is not None else None,
                             clone=bool(self.snapshot)),
                     loads, ctx.manager.config.overcommit)
        spec = agent.CreateVm(
            name=self.name, image=self.image, disk_image=self.disk_image, memory=f"{mib}M",
            cpus=self.cpus, cmdline=self.cmdline, nics=self.nics, driver=self.driver,
            start=self.start, snapshot=self.snapshot)
        s.add(Vm(name=self.name, owner=owner, host=host.name,
                 desired="running" if self.start else "stopped", actual="creating",
                 cpus=self.cpus, memory_mib=mib, image=self.image,
                 spec=spec.model_dump(mode="json"), cluster=self.cluster, group=self.group,
                 spread=self.anti_affinity, detail=""))
        s.flush()  # the next VM of a batch sees this one's place

    def snapshot_holders(self, ctx: OpContext) -> set[str]:
        """Ask the agents that are up which hold golden snapshot ``self.snapshot``; make this
        request the snapshot's machine (image, memory, vCPUs); return the hosts whose snapshot
        it is. NotFound when no host has one of that name, BadRequest for what contradicts it."""
        name = self.snapshot
        given = self.model_fields_set
        if self.cmdline is not None:
            raise BadRequest(f"a clone of snapshot {name!r} keeps the snapshot's kernel command "
                             "line: leave 'cmdline' out")
        if self.disk_image:
            raise BadRequest(f"a clone of snapshot {name!r} has the snapshot's disk only: "
                             "'disk_image' cannot be given with 'snapshot'")
        up = ctx.session.scalars(select(Host).where(Host.state == "up")).all()
        answers = call_many({h.name: ctx.manager.agent_for(h.name, h.url, h.token) for h in up},
                            "list_snapshots")
        found: dict[str, agent.SnapshotOut] = {}
        known: set[str] = set()
        for host, r in sorted(answers.items()):
            for snap in r.payload if r.ok else []:
                known.add(snap.name)
                if snap.name == name:
                    found[host] = snap
        if not found:
            silent = sorted(h for h, r in answers.items() if not r.ok)
            raise NotFound(f"no snapshot {name!r} on any host (known: "
                           f"{', '.join(sorted(known)) or 'none'})"
                           + (f"; {', '.join(silent)} did not answer" if silent else ""))

        def where(snaps: dict[str, agent.SnapshotOut]) -> str:
            return ", ".join(f"{h}: image {g.image}, {g.memory_mib} MiB, {g.cpus} vCPU"
                             for h, g in sorted(snaps.items()))

        cands = {h: g for h, g in found.items() if "image" not in given or g.image == self.image}
        if not cands:
            raise BadRequest(f"snapshot {name!r} is not of image {self.image!r} ({where(found)}): "
                             "leave 'image' out (a clone has its snapshot's)")
        if self.host is not None:
            if ctx.session.get(Host, self.host) is None:
                raise NoCapacity(f"there is no host {self.host!r}")
            if self.host not in cands:
                raise NoCapacity(f"host {self.host} has no snapshot {name!r}"
                                 + (f" of image {self.image!r}" if "image" in given else "")
                                 + f" (hosts with it: {', '.join(sorted(cands))})")
            cands = {self.host: cands[self.host]}
        machines = {(g.image, g.memory_mib, g.cpus) for g in cands.values()}
        if len(machines) > 1:
            raise BadRequest(f"snapshot {name!r} is not the same machine on every host "
                             f"({where(cands)}): pin a host with 'host' (or give 'image')")
        image, mib, cpus = machines.pop()
        if "memory" in given and self.memory_mib() != mib:
            raise BadRequest(f"a clone of snapshot {name!r} has its {mib} MiB of memory, not "
                             f"{self.memory}: leave 'memory' out")
        if "cpus" in given and self.cpus != cpus:
            raise BadRequest(f"a clone of snapshot {name!r} has its {cpus} vCPU(s), not "
                             f"{self.cpus}: leave 'cpus' out")
        self.image, self.memory, self.cpus = image, f"{mib}M", cpus
        return set(cands)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        ctx.progress(0.05)
        host = self.create(ctx)
        return {"vm": self.name, "host": host}

    def create(self, ctx: JobContext) -> str:
        """Ask the VM's agent to make it; on failure remove it from the store again."""
        with ctx.manager.vm_lock(self.name):
            with ctx.session() as s:
                vm = s.get(Vm, self.name)
                if vm is None:
                    raise NotFound(f"VM {self.name!r} is gone")
                host, spec = vm.host or "", agent.CreateVm.model_validate(vm.spec)
            try:
                ctx.check_cancelled()
                ctx.log(f"{self.name}: creating on {host}")
                out = ctx.agent(host).call("create_vm", spec)
            except (AgentError, Cancelled) as exc:
                self._undo(ctx, host, exc)
                raise
            with ctx.session() as s:
                record(s, self.name, out)
            ctx.log(f"{self.name}: {out.state} on {host}")
            return host

    def abandon(self, manager: Any) -> None:
        with manager.store.session() as s:
            vm = s.get(Vm, self.name)
            if vm is not None and vm.actual == "creating":
                s.delete(vm)

    def _undo(self, ctx: JobContext, host: str, exc: VnixError) -> None:
        if not isinstance(exc, Cancelled) and not (isinstance(exc, AgentError)
                                                   and exc.status == 409):
            try:  # the agent may have made part of it
                ctx.agent(host).call("delete_vm", name=self.name)
            except AgentError as undo:
                if undo.status != 404:
                    ctx.log(f"{self.name}: cleaning up on {host} failed: {undo}")
        with ctx.session() as s:
            vm = s.get(Vm, self.name)
            if vm is not None:
                s.delete(vm)
        ctx.log(f"{self.name}: not created: {exc}")


def check_quota(ctx: OpContext, user: User, vms: int, cpus: int, mib: int) -> None:
    """Admins have no quota, and what an admin makes for a user is not refused either."""
    if user.role == "admin" or ctx.actor.is_admin:
        return
    n, c, m = ctx.manager.usage(ctx.session, user.name)
    for limit, used, more, what in ((user.max_vms, n, vms, "VMs"),
                                    (user.max_cpus, c, cpus, "vCPUs"),
                                    (user.max_memory_mib, m, mib, "MiB of memory")):
        if limit is not None and used + more > limit:
            raise QuotaExceeded(f"quota exceeded: {user.name} may have {limit} {what}, "
                                f"has {used} and asks for {more} more")


@register
class CreateVms(Operation):
    """A batch: placed one after the other (so they spread), created in parallel."""

    kind: Literal["create_vms"] = "create_vms"
    vms: list[CreateVm] = Field(min_length=1, max_length=512)
    parallel: int = Field(8, ge=1, le=64)

    def describe(self) -> str:
        return f"create {len(self.vms)} VMs"

    def target(self) -> str:
        return f"vms/{self.vms[0].name}..{self.vms[-1].name}" if len(self.vms) > 1 \
            else f"vm/{self.vms[0].name}"

    def check(self, ctx: OpContext) -> None:
        names = [v.name for v in self.vms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BadRequest(f"the batch names VM(s) {', '.join(dup)} twice")
        for vm in self.vms:
            vm.check(ctx)

    def abandon(self, manager: Any) -> None:
        for vm in self.vms:
            vm.abandon(manager)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        results = ctx.parallel(self.vms, lambda v: v.create(ctx), lambda v: v.name,
                               self.parallel)
        for vm, _, err in results:
            if err is not None:
                vm.abandon(ctx.manager)  # those never started keep no row
        summarize(results, lambda v: v.name)
        return {"vms": {v.name: host for v, host, _ in results}}


class VmAction(Operation):
    """An action on one VM: the agent call it makes, the desired state it leaves."""

    name: str
    verb: ClassVar[str]
    desired: ClassVar[str]
    calls: ClassVar[dict[str, str]]  # actual state -> agent call (the states it starts from)

    def describe(self) -> str:
        return f"{self.verb} VM {self.name}"

    def target(self) -> str:
        return f"vm/{self.name}"

    def check(self, ctx: OpContext) -> None:
        vm = visible_vm(ctx.session, ctx.actor, self.name, touch=True)
        self.check_state(ctx.session, vm)
        vm.desired = self.desired

    def check_state(self, s: Session, vm: Vm) -> None:
        host = s.get(Host, vm.host) if vm.host else None
        if host is not None and host.state != "up":
            raise Conflict(f"cannot {self.verb} VM {vm.name!r}: its host {host.name} is down")
        calls = self.call_table()
        if vm.actual not in calls:
            raise Conflict(f"cannot {self.verb} VM {vm.name!r}: it is {vm.actual}, needs "
                           f"{' or '.join(calls)}")

    def call_table(self) -> dict[str, str]:
        return self.calls

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.manager.vm_lock(self.name):
            with ctx.session() as s:
                vm = s.get(Vm, self.name)
                if vm is None:
                    raise NotFound(f"VM {self.name!r} is gone")
                host, actual = vm.host or "", vm.actual
            calls = self.call_table()
            call = calls.get(actual, next(iter(calls.values())))
            ctx.log(f"{self.name}: {call} on {host}")
            out = ctx.agent(host).call(call, self.body(), name=self.name)
            with ctx.session() as s:
                record(s, self.name, out)
            return {"vm": self.name, "state": out.state}

    def body(self) -> Any:
        return None


def _from(action: str, call: str) -> dict[str, str]:
    return {st.value: call for st in ACTIONS[action]}


@register
class StartVm(VmAction):
    kind: Literal["start_vm"] = "start_vm"
    verb, desired, calls = "start", "running", _from("start", "start_vm")


@register
class StopVm(VmAction):
    kind: Literal["stop_vm"] = "stop_vm"
    force: bool = Field(False, description="pull the plug at once")
    timeout: float = Field(30.0, ge=0, le=600, description="then pull the plug")
    verb, desired, calls = "stop", "stopped", _from("stop", "stop_vm")

    def call_table(self) -> dict[str, str]:
        return _from("force-stop", "force_stop_vm") if self.force else self.calls

    def body(self) -> Any:
        return None if self.force else agent.StopVm(timeout=self.timeout, force_after=True)


@register
class PauseVm(VmAction):
    kind: Literal["pause_vm"] = "pause_vm"
    verb, desired, calls = "pause", "paused", _from("pause", "pause_vm")


@register
class ResumeVm(VmAction):
    kind: Literal["resume_vm"] = "resume_vm"
    verb, desired = "resume", "running"
    calls = {**_from("resume", "resume_vm"), **_from("resume-from-disk", "resume_from_disk_vm")}


@register
class SuspendVm(VmAction):
    kind: Literal["suspend_vm"] = "suspend_vm"
    verb, desired, calls = "suspend", "suspended", _from("suspend", "suspend_vm")


@register
class DeleteVm(Operation):
    kind: Literal["delete_vm"] = "delete_vm"
    name: str

    def describe(self) -> str:
        return f"delete VM {self.name}"

    def target(self) -> str:
        return f"vm/{self.name}"

    def check(self, ctx: OpContext) -> None:
        vm = visible_vm(ctx.session, ctx.actor, self.name, touch=True)
        if vm.desired == "deleted":
            raise Conflict(f"VM {self.name!r} is being deleted already")
        vm.desired = "deleted"

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        return {"vm": self.name, "deleted": delete_vm(ctx.manager, self.name, ctx.log)}


def delete_vm(manager: Any, name: str, log: Any) -> bool:
    """Delete VM ``name`` on its agent, then from the store. False if its host is down (the
    reconcile loop finishes the job when the host is back)."""
    with manager.vm_lock(name):
        with manager.store.session() as s:
            vm = s.get(Vm, name)
            if vm is None:
                return True
            host = s.get(Host, vm.host) if vm.host else None
            if host is not None and host.state != "up":
                log(f"{name}: host {host.name} is down: deleted when it is back")
                return False
        if host is not None:
            try:
                manager.agent(host.name).call("delete_vm", name=name)
            except AgentError as exc:
                if exc.status != 404:
                    raise
            log(f"{name}: deleted on {host.name}")
        with manager.store.session() as s:
            vm = s.get(Vm, name)
            if vm is not None:
                s.delete(vm)
        return True
