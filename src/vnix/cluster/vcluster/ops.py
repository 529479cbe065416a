"""Cluster operations: create, import, delete, export, scale a group, batch actions, move.

Each is a typed :class:`~vnix.cluster.operations.Operation` (the same object from the CLI, the
REST API and the web UI). ``check`` parses and places in the request's transaction — every node
gets its host and its VM row before the job is queued, so a cluster that cannot fit is refused
at once with the scheduler's reasons — and ``run`` does the slow part in the job, in parallel
across hosts, with progress per node. Fields marked "set by check" are filled in by ``check``
(it runs before the operation is stored with its job).
"""
from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import Field
from sqlalchemy.orm import Session

from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import AgentError, BadRequest, ClusterError, Conflict, Forbidden, NotFound
from vnix.cluster.operations import JobContext, OpContext, Operation, register, summarize
from vnix.cluster.ops_vm import (
    CreateVm,
    ResumeVm,
    StartVm,
    StopVm,
    SuspendVm,
    VmAction,
    check_quota,
    delete_vm,
    record,
)
from vnix.cluster.tables import Cluster, User, Vm
from vnix.cluster.vcluster import deploy, records
from vnix.cluster.vcluster.model import CLUSTER_NAME, ClusterSpec, node_name
from vnix.cluster.vcluster.xmlio import MAX_BYTES, export_cluster, parse_cluster

__all__ = ["BatchAction", "CreateCluster", "DeleteCluster", "ExportCluster", "ImportCluster",
           "MoveNode", "ScaleGroup", "export_text"]


def _owner(s: Session, actor: Actor, owner: str | None) -> str:
    owner = owner or actor.name
    if owner != actor.name and not actor.is_admin:
        raise Forbidden(f"only an admin may create clusters for {owner!r}")
    if s.get(User, owner) is None:
        raise NotFound(f"no user {owner!r}")
    return owner


def _forget_nodes(s: Session, names: list[str]) -> None:
    for name in names:
        vm = s.get(Vm, name)
        if vm is not None and vm.actual == "creating":
            s.delete(vm)


def _create_nodes(ctx: JobContext, cluster: str, names: list[str], parallel: int) -> dict[str, str]:
    """Create the recorded nodes ``names`` in parallel; raises one error naming all failures."""
    deploy.name_nodes(ctx.manager, names, ctx.log)
    ops = [CreateVm(name=n) for n in names]  # create() reads host and spec from the VM row
    results = ctx.parallel(ops, lambda v: v.create(ctx), lambda v: v.name, parallel)
    failed = any(err is not None for _, _, err in results)
    with ctx.session() as s:
        row = s.get(Cluster, cluster)
        if row is not None:
            row.state = "degraded" if failed else "active"
    summarize(results, lambda v: v.name)
    return {v.name: str(host) for v, host, _ in results}


@register
class CreateCluster(Operation):
    """Deploy a cluster from its XML: networks on the hosts, then all nodes in parallel."""

    kind: Literal["create_cluster"] = "create_cluster"
    xml: str = Field(max_length=MAX_BYTES, description="the cluster file's text")
    filename: str = Field("cluster.xml", max_length=255, description="for error messages")
    name: str | None = Field(None, pattern=CLUSTER_NAME, description="another name than the file's")
    start: bool = True
    owner: str | None = Field(None, description="admins may create clusters for others")
    parallel: int = Field(8, ge=1, le=64, description="VMs created at once")
    cluster: str = Field("", description="set by check")
    nodes: list[str] = Field(default_factory=list, description="set by check")

    def describe(self) -> str:
        return f"create cluster {self.cluster or self.name or ''}".rstrip()

    def target(self) -> str:
        return f"cluster/{self.cluster}"

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        saved = records.saved_profiles(s)
        spec = parse_cluster(self.xml, self.filename, saved_profiles=set(saved))
        if self.name:
            spec = spec.model_copy(update={"name": self.name})
        owner = _owner(s, ctx.actor, self.owner)
        if s.get(Cluster, spec.name) is not None:
            raise Conflict(f"cluster {spec.name!r} exists already")
        records.check_subnets_free(s, spec)
        row = Cluster(name=spec.name, owner=owner, xml="", state="creating")
        s.add(row)
        records.save_spec(s, row, spec)
        s.flush()
        self.cluster, self.nodes = spec.name, []
        taken: set[str] = set()
        for g in spec.groups:
            todo = []
            for i in range(g.count):
                if not self.adopt_node(ctx, spec, g.name, node_name(spec.name, g.name, i), owner):
                    todo.append(i)
            made = deploy.plan_nodes(ctx, spec.name, spec, g, todo, owner, saved, taken,
                                     self.start)
            self.nodes += [op.name for op in made]

    def adopt_node(self, ctx: OpContext, spec: ClusterSpec, group: str, name: str,
                   owner: str) -> bool:
        return False

    def abandon(self, manager: Any) -> None:
        """Cancelled before it ran: forget the nodes and the cluster that check recorded."""
        with manager.store.session() as s:
            _forget_nodes(s, self.nodes)
            for vm in records.nodes(s, self.cluster):  # adopted VMs go back to no cluster
                vm.cluster, vm.group = None, None
            records.drop_vnis(s, self.cluster)
            row = s.get(Cluster, self.cluster)
            if row is not None:
                s.delete(row)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        t0 = time.monotonic()
        with ctx.session() as s:
            row = s.get(Cluster, self.cluster)
            if row is None:
                raise NotFound(f"cluster {self.cluster!r} is gone")
            spec = records.spec_of(row)
        ctx.progress(0.01, f"cluster {self.cluster}: {len(self.nodes)} node(s) to create")
        for problem in deploy.ensure_networks(ctx.manager, self.cluster, spec, ctx.log):
            ctx.log(problem)
        hosts = _create_nodes(ctx, self.cluster, self.nodes, self.parallel)
        return {"cluster": self.cluster, "nodes": hosts,
                "seconds": round(time.monotonic() - t0, 2)}


@register
class ImportCluster(CreateCluster):
    """Create a cluster from an exported file; with ``adopt``, VMs that already exist under a
    node's name (the owner's, in no cluster) become that node instead of a new VM."""

    kind: Literal["import_cluster"] = "import_cluster"  # type: ignore[assignment]
    adopt_existing: bool = Field(False, description="take over existing VMs named like nodes")
    adopted: list[str] = Field(default_factory=list, description="set by check")

    def describe(self) -> str:
        return f"import cluster {self.cluster or self.name or ''}".rstrip()

    def adopt_node(self, ctx: OpContext, spec: ClusterSpec, group: str, name: str,
                   owner: str) -> bool:
        vm = ctx.session.get(Vm, name)
        if vm is None or not self.adopt_existing:
            return False
        if vm.cluster or vm.owner != owner or vm.desired == "deleted":
            raise Conflict(f"VM {name!r} exists and cannot be adopted (owner {vm.owner}, "
                           f"cluster {vm.cluster or '-'})")
        vm.cluster, vm.group = spec.name, group
        self.adopted.append(name)
        return True


@register
class DeleteCluster(Operation):
    kind: Literal["delete_cluster"] = "delete_cluster"
    name: str
    parallel: int = Field(8, ge=1, le=64)
    nodes: list[str] = Field(default_factory=list, description="set by check")

    def describe(self) -> str:
        return f"delete cluster {self.name}"

    def target(self) -> str:
        return f"cluster/{self.name}"

    def check(self, ctx: OpContext) -> None:
        row = records.visible_cluster(ctx.session, ctx.actor, self.name, touch=True)
        row.state = "deleting"
        self.nodes = []
        for vm in records.nodes(ctx.session, self.name):
            vm.desired = "deleted"
            self.nodes.append(vm.name)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.session() as s:
            row = s.get(Cluster, self.name)
            if row is None:
                return {"cluster": self.name, "deleted": True}
            spec = records.spec_of(row)
        results = ctx.parallel(self.nodes, lambda n: delete_vm(ctx.manager, n, ctx.log),
                               lambda n: n, self.parallel)
        left = [n for n, done, err in results if err is not None or not done]
        deploy.drop_networks(ctx.manager, self.name, spec, ctx.log)
        if left:
            summarize(results, lambda n: n)
            raise ClusterError(f"cluster {self.name}: {len(left)} node(s) wait for their "
                               f"host to come back: {', '.join(left[:8])}")
        with ctx.session() as s:
            records.drop_vnis(s, self.name)
            row = s.get(Cluster, self.name)
            if row is not None:
                s.delete(row)
        return {"cluster": self.name, "deleted": True, "nodes": len(self.nodes)}


def export_text(s: Session, row: Cluster) -> str:
    """The cluster as it is now, with the saved profiles it uses written in (self-contained)."""
    spec = records.spec_of(row)
    saved = records.saved_profiles(s)
    inline = {p.name for p in spec.profiles}
    extra = [saved[g.profile] for g in spec.groups
             if g.profile and g.profile not in inline and g.profile in saved]
    uniq = {p.name: p for p in extra}
    spec = spec.model_copy(update={"profiles": [*spec.profiles, *uniq.values()]})
    return export_cluster(spec).decode()


@register
class ExportCluster(Operation):
    kind: Literal["export_cluster"] = "export_cluster"
    name: str
    min_role: ClassVar[Role] = Role.GUEST
    inline: ClassVar[bool] = True

    def describe(self) -> str:
        return f"export cluster {self.name}"

    def target(self) -> str:
        return f"cluster/{self.name}"

    def check(self, ctx: OpContext) -> None:
        records.visible_cluster(ctx.session, ctx.actor, self.name)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.session() as s:
            row = s.get(Cluster, self.name)
            if row is None:
                raise NotFound(f"no cluster {self.name!r}")
            return {"cluster": self.name, "xml": export_text(s, row)}


@register
class ScaleGroup(Operation):
    """Grow a group (new nodes placed and created like at deploy) or shrink it (the nodes with
    the highest indices are deleted)."""

    kind: Literal["scale_group"] = "scale_group"
    cluster: str
    group: str
    count: int = Field(ge=0, le=256)
    parallel: int = Field(8, ge=1, le=64)
    added: list[str] = Field(default_factory=list, description="set by check")
    removed: list[str] = Field(default_factory=list, description="set by check")

    def describe(self) -> str:
        return f"scale {self.cluster}/{self.group} to {self.count}"

    def target(self) -> str:
        return f"cluster/{self.cluster}"

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        row = records.visible_cluster(s, ctx.actor, self.cluster, touch=True)
        spec = records.spec_of(row)
        try:
            group = spec.group(self.group)
        except KeyError:
            raise NotFound(f"cluster {self.cluster!r} has no group {self.group!r} (groups: "
                           f"{', '.join(g.name for g in spec.groups)})") from None
        live = [v for v in records.nodes(s, self.cluster, self.group) if v.desired != "deleted"]
        self.added, self.removed = [], []
        if self.count > len(live):
            prefix = f"{self.cluster}-{self.group}-"
            used = {int(v.name[len(prefix):]) for v in records.nodes(s, self.cluster)
                    if v.name.startswith(prefix) and v.name[len(prefix):].isdigit()}
            indices, i = [], 0
            while len(indices) < self.count - len(live):
                if i not in used and s.get(Vm, node_name(self.cluster, self.group, i)) is None:
                    indices.append(i)
                i += 1
            made = deploy.plan_nodes(ctx, self.cluster, spec, group, indices, row.owner,
                                     records.saved_profiles(s), set())
            self.added = [op.name for op in made]
        else:
            for vm in sorted(live, key=lambda v: records.node_sort_key(v.name))[self.count:]:
                vm.desired = "deleted"
                self.removed.append(vm.name)
        group.count = self.count
        records.save_spec(s, row, spec)

    def abandon(self, manager: Any) -> None:
        """Cancelled before it ran: forget the added nodes, keep the removed ones, and put
        the group's count back to the nodes it has."""
        with manager.store.session() as s:
            _forget_nodes(s, self.added)
            for name in self.removed:
                vm = s.get(Vm, name)
                if vm is not None and vm.desired == "deleted":
                    vm.desired = "running" if vm.actual != "stopped" else "stopped"
            row = s.get(Cluster, self.cluster)
            if row is not None:
                spec = records.spec_of(row)
                live = [v for v in records.nodes(s, self.cluster, self.group)
                        if v.desired != "deleted"]
                spec.group(self.group).count = len(live)
                records.save_spec(s, row, spec)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.session() as s:
            row = s.get(Cluster, self.cluster)
            if row is None:
                raise NotFound(f"cluster {self.cluster!r} is gone")
            spec = records.spec_of(row)
        out: dict[str, Any] = {"cluster": self.cluster, "group": self.group, "count": self.count}
        if self.added:
            for problem in deploy.ensure_networks(ctx.manager, self.cluster, spec, ctx.log):
                ctx.log(problem)
            out["added"] = _create_nodes(ctx, self.cluster, self.added, self.parallel)
        if self.removed:
            results = ctx.parallel(self.removed, lambda n: delete_vm(ctx.manager, n, ctx.log),
                                   lambda n: n, self.parallel)
            summarize(results, lambda n: n)
            deploy.ensure_networks(ctx.manager, self.cluster, spec, ctx.log)
            out["removed"] = self.removed
        return out


ACTION_OPS: dict[str, type[VmAction]] = {
    "start": StartVm, "stop": StopVm, "suspend": SuspendVm, "resume": ResumeVm,
}


@register
class BatchAction(Operation):
    """start / stop / suspend / resume every node of a cluster (or of one group) at once.
    Nodes already in the wanted state, or in a state the action cannot start from, are
    skipped and listed, not failed."""

    kind: Literal["cluster_action"] = "cluster_action"
    cluster: str
    action: Literal["start", "stop", "suspend", "resume"]
    group: str | None = None
    force: bool = Field(False, description="stop: pull the plug at once")
    parallel: int = Field(8, ge=1, le=64)
    nodes: list[str] = Field(default_factory=list, description="set by check")
    skipped: dict[str, str] = Field(default_factory=dict, description="set by check")

    def describe(self) -> str:
        return f"{self.action} cluster {self.cluster}" + (f"/{self.group}" if self.group else "")

    def target(self) -> str:
        return f"cluster/{self.cluster}"

    def node_op(self, name: str) -> VmAction:
        if self.action == "stop":
            return StopVm(name=name, force=self.force)
        return ACTION_OPS[self.action](name=name)  # type: ignore[call-arg]

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        row = records.visible_cluster(s, ctx.actor, self.cluster, touch=True)
        if self.group and self.group not in {g.name for g in row.groups}:
            raise NotFound(f"cluster {self.cluster!r} has no group {self.group!r}")
        self.nodes, self.skipped = [], {}
        for vm in records.nodes(s, self.cluster, self.group):
            if vm.desired == "deleted":
                continue
            op = self.node_op(vm.name)
            try:
                op.check_state(s, vm)
            except Conflict as exc:
                self.skipped[vm.name] = str(exc)
                continue
            vm.desired = op.desired
            self.nodes.append(vm.name)
        if not self.nodes and not self.skipped:
            raise Conflict(f"cluster {self.cluster!r} has no nodes to {self.action}")

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        for name, why in self.skipped.items():
            ctx.log(f"{name}: skipped: {why}")
        results = ctx.parallel(self.nodes, lambda n: self.node_op(n).run(ctx), lambda n: n,
                               self.parallel)
        summarize(results, lambda n: n)
        return {"cluster": self.cluster, "action": self.action, "done": self.nodes,
                "skipped": self.skipped}


@register
class MoveNode(Operation):
    """Move a node to another cluster: balloon it down to the target group's memory, suspend
    it, re-assign it in the store (group counts of both clusters follow), resume it.
    The VM keeps its name and its NICs (the agent has no NIC hot-plug yet), so it stays on
    its old cluster's network."""

    kind: Literal["move_node"] = "move_node"
    node: str
    to: str = Field(description="the cluster to move it into")
    group: str | None = Field(None, description="its group there (default: the same name, "
                                                "else the first group)")
    balloon_mib: int | None = Field(None, ge=16, description="default: the target group's "
                                                             "memory when that is smaller")
    resume: bool = True
    source: str = Field("", description="set by check")

    def describe(self) -> str:
        return f"move {self.node} to cluster {self.to}"

    def target(self) -> str:
        return f"vm/{self.node}"

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        vm = s.get(Vm, self.node)
        if vm is None or not ctx.actor.may_see(vm.owner):
            raise NotFound(f"no VM {self.node!r}")
        if not vm.cluster:
            raise BadRequest(f"VM {self.node!r} is in no cluster")
        src = records.visible_cluster(s, ctx.actor, vm.cluster, touch=True)
        dst = records.visible_cluster(s, ctx.actor, self.to, touch=True)
        if src.name == dst.name:
            raise BadRequest(f"{self.node} is in cluster {self.to} already")
        if vm.desired == "deleted":
            raise Conflict(f"VM {self.node!r} is being deleted")
        if vm.actual not in ("running", "paused", "suspended", "stopped"):
            raise Conflict(f"cannot move {self.node}: it is {vm.actual}")
        dspec = records.spec_of(dst)
        names = [g.name for g in dspec.groups]
        self.group = self.group or (vm.group if vm.group in names else names[0])
        if self.group not in names:
            raise NotFound(f"cluster {self.to!r} has no group {self.group!r}")
        if src.owner != dst.owner:
            owner = s.get(User, dst.owner)
            if owner is not None:
                check_quota(ctx, owner, 1, vm.cpus, vm.memory_mib)
        if self.balloon_mib is None:
            want = dspec.resolve(dspec.group(self.group), records.saved_profiles(s)).memory_mib
            self.balloon_mib = want if want < vm.memory_mib else None
        self.source = src.name

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        steps: list[str] = []
        with ctx.manager.vm_lock(self.node):
            with ctx.session() as s:
                vm = s.get(Vm, self.node)
                if vm is None:
                    raise NotFound(f"VM {self.node!r} is gone")
                host, actual = vm.host or "", vm.actual
            client = ctx.agent(host)
            if self.balloon_mib and actual in ("running", "paused"):
                from vnix.node.models import Balloon

                try:
                    client.call("balloon_vm", Balloon(target_mib=self.balloon_mib), name=self.node)
                    steps.append(f"ballooned to {self.balloon_mib} MiB")
                except AgentError as exc:  # no balloon driver in the guest, fake driver, ...
                    steps.append(f"balloon skipped: {exc.message}")
                ctx.progress(0.25, f"{self.node}: {steps[-1]}")
            if actual in ("running", "paused"):
                out = client.call("suspend_vm", name=self.node)
                with ctx.session() as s:
                    record(s, self.node, out)
                steps.append("suspended")
                ctx.progress(0.5, f"{self.node}: suspended on {host}")
            with ctx.session() as s:
                self._reassign(s)
            steps.append(f"re-assigned {self.source} -> {self.to}/{self.group}")
            ctx.progress(0.75, f"{self.node}: {steps[-1]}")
            if self.resume and actual in ("running", "paused"):
                out = client.call("resume_from_disk_vm", name=self.node)
                with ctx.session() as s:
                    record(s, self.node, out)
                    vm = s.get(Vm, self.node)
                    if vm is not None:
                        vm.desired = "running"
                steps.append("resumed")
        return {"node": self.node, "from": self.source, "to": self.to, "group": self.group,
                "steps": steps}

    def _reassign(self, s: Session) -> None:
        vm = s.get(Vm, self.node)
        src, dst = s.get(Cluster, self.source), s.get(Cluster, self.to)
        if vm is None or src is None or dst is None:
            raise NotFound("the node or one of the clusters is gone")
        sspec, dspec = records.spec_of(src), records.spec_of(dst)
        if vm.group:
            try:
                g = sspec.group(vm.group)
                g.count = max(0, g.count - 1)
            except KeyError:
                pass
        dg = dspec.group(self.group or "")
        dg.count += 1
        vm.cluster, vm.group = dst.name, dg.name
        vm.spread = dg.placement.policy == "anti-affinity"
        if vm.owner != dst.owner:
            vm.owner = dst.owner
        if vm.desired != "running" or not self.resume:
            vm.desired = "suspended" if vm.actual == "suspended" else vm.desired
        records.save_spec(s, src, sspec)
        records.save_spec(s, dst, dspec)
