"""/api/v1/snapshots: golden snapshots on the hosts (``vnix.cluster.ops_snapshot``).

``GET`` asks the agents that are up and names those that did not answer; ``POST`` makes one
in a job (202, ``?wait=SECONDS`` as for VMs); ``DELETE`` is at once (204). Listing is for
anyone logged in, making and deleting for admins (as images are).
"""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from vnix.api.deps import ADMIN, GUEST, manager_of
from vnix.api.models import JobOut, SilentHost, SnapshotOut, SnapshotsOut
from vnix.api.routes_vms import WAIT, submit
from vnix.cluster.auth import Actor
from vnix.cluster.operations import parse_operation
from vnix.cluster.ops_snapshot import CreateSnapshot, DeleteSnapshot, holdings
from vnix.cluster.tables import Vm

router = APIRouter(prefix="/snapshots", tags=["snapshots"])


@router.get("", response_model=SnapshotsOut)
def list_snapshots(request: Request, actor: Actor = GUEST,
                   host: str | None = Query(None, description="only this host")) -> SnapshotsOut:
    """Every host's golden snapshots (the agents that are up are asked)."""
    manager = manager_of(request)
    with manager.store.session() as s:
        have = holdings(manager, s, host)
        owners = dict(s.execute(select(Vm.name, Vm.owner)).tuples().all())
    out = []
    for h, snaps in sorted(have.snapshots.items()):
        for g in sorted(snaps.values(), key=lambda g: g.name):
            out.append(SnapshotOut(
                host=h, name=g.name, image=g.image, memory_mib=g.memory_mib, cpus=g.cpus,
                size=g.size, created=datetime.fromtimestamp(g.created, timezone.utc),
                clones=len(g.used_by),
                used_by=sorted(v for v in g.used_by
                               if actor.may_see(owners.get(v, ""))),
                vsock=g.vsock, identity=g.identity_port is not None, boot_s=g.boot_s,
                save_s=g.save_s))
    return SnapshotsOut(snapshots=out, unanswered=[SilentHost(host=h, error=e)
                                                   for h, e in sorted(have.silent.items())])


@router.post("", response_model=JobOut, status_code=202)
def create_snapshot(request: Request, response: Response, op: CreateSnapshot,
                    actor: Actor = ADMIN, wait: float = WAIT) -> JobOut:
    """Make a golden snapshot (a job: a template VM boots and is saved, seconds)."""
    return submit(request, response, op, actor, wait)


@router.delete("/{name}", status_code=204)
def delete_snapshot(request: Request, name: str, actor: Actor = ADMIN,
                    host: str | None = Query(None, description="only on this host (default: "
                                             "every host holding it)")) -> Response:
    """404 if no host holds it, 409 while VMs are clones of it (named)."""
    op = parse_operation({"kind": DeleteSnapshot.model_fields["kind"].default, "name": name,
                          "host": host})  # a bad name: 400, not a 500
    manager_of(request).submit(op, actor)
    return Response(status_code=204)
