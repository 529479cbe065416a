"""/api/v1/clusters and /api/v1/profiles: virtual clusters described in XML.

Creating, importing, deleting, scaling, batch actions and moves answer 202 with the job
(``?wait=SECONDS`` waits for it first, then 200). A cluster file travels as the request body,
either raw (``Content-Type: application/xml``; ``?name=`` renames, ``?start=false`` deploys
stopped) or as JSON ``{"xml": "...", "filename": "...", ...}``. A bad file is a 400 whose
``error`` names every problem as ``<file>:<line>: <message>``; nothing is stored then.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from vnix.api.deps import GUEST, USER, manager_of
from vnix.api.models import JobOut
from vnix.api.routes_vms import WAIT, submit
from vnix.cluster.auth import Actor
from vnix.cluster.errors import BadRequest, NotFound
from vnix.cluster.tables import Cluster
from vnix.cluster.vcluster import records, schema_text
from vnix.cluster.vcluster.model import CLUSTER_NAME, Profile
from vnix.cluster.vcluster.ops import (
    BatchAction,
    CreateCluster,
    DeleteCluster,
    ImportCluster,
    MoveNode,
    ScaleGroup,
    export_text,
)
from vnix.cluster.vcluster.profiles import DeleteProfile, SaveProfile, list_profiles
from vnix.cluster.vcluster.xmlio import MAX_BYTES

router = APIRouter(prefix="/clusters", tags=["clusters"])
profiles_router = APIRouter(prefix="/profiles", tags=["clusters"])
XML = "application/xml"


class ClusterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    xml: str = Field(max_length=MAX_BYTES)
    filename: str = Field("cluster.xml", max_length=255)
    name: str | None = Field(None, pattern=CLUSTER_NAME)
    start: bool = True
    owner: str | None = None
    parallel: int = Field(8, ge=1, le=64)
    adopt_existing: bool = False


class GroupOut(BaseModel):
    name: str
    count: int
    anti_affinity: bool


class NodeOut(BaseModel):
    name: str
    group: str | None
    host: str | None
    desired: str
    actual: str
    cpus: int
    memory_mib: int
    ips: list[str]
    detail: str


class ClusterOut(BaseModel):
    name: str
    owner: str
    state: str
    groups: list[GroupOut]
    nodes: int
    running: int


class ClusterDetail(ClusterOut):
    description: str | None
    node_list: list[NodeOut]
    networks: list[dict[str, Any]]


class ScaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str
    count: int = Field(ge=0, le=256)


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str
    group: str | None = None
    balloon_mib: int | None = Field(None, ge=16)
    resume: bool = True


class ProfileOut(Profile):
    owner: str | None
    used_by: list[str]


async def _body(request: Request) -> bytes:
    data = await request.body()
    if len(data) > MAX_BYTES + 4096:
        raise BadRequest(f"request body is {len(data)} bytes; a cluster file may have "
                         f"{MAX_BYTES} at most")
    return data


def _cluster_in(request: Request, body: bytes, name: str | None, start: bool) -> ClusterIn:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json":
            return ClusterIn.model_validate(json.loads(body or b"null"))
        text = body.decode("utf-8")
        return ClusterIn(xml=text, name=name, start=start,
                         filename=request.headers.get("x-filename", "cluster.xml")[:255])
    except UnicodeDecodeError:
        raise BadRequest("the cluster file is not UTF-8 text") from None
    except ValueError as exc:  # bad JSON, or a ValidationError
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequest(f"{where}: {first['msg']}") from None
        raise BadRequest(f"request body is not JSON: {exc}") from None


def _summary(row: Cluster, nodes: list[Any]) -> dict[str, Any]:
    return {"name": row.name, "owner": row.owner, "state": row.state,
            "groups": [GroupOut(name=g.name, count=g.count, anti_affinity=g.anti_affinity)
                       for g in sorted(row.groups, key=lambda g: g.id)],
            "nodes": len(nodes), "running": sum(1 for v in nodes if v.actual == "running")}


@router.get("", response_model=list[ClusterOut])
def list_clusters(request: Request, actor: Actor = GUEST) -> list[ClusterOut]:
    with manager_of(request).store.session() as s:
        return [ClusterOut(**_summary(row, records.nodes(s, row.name)))
                for row in s.scalars(select(Cluster).order_by(Cluster.name))
                if actor.may_see(row.owner)]


@router.get("/schema", response_class=Response, responses={200: {"content": {XML: {}}}})
def cluster_schema(actor: Actor = GUEST) -> Response:
    """The XSD cluster files are checked against."""
    return Response(schema_text(), media_type=XML)


@router.post("", response_model=JobOut, status_code=202,
             openapi_extra={"requestBody": {"content": {XML: {"schema": {"type": "string"}},
                                                        "application/json": {"schema": {
                                                            "$ref": "#/components/schemas/ClusterIn"}}}}})
def create_cluster(request: Request, response: Response, body: bytes = Depends(_body),
                   actor: Actor = USER, wait: float = WAIT, name: str | None = None,
                   start: bool = True) -> JobOut:
    """Deploy a cluster from its XML file."""
    req = _cluster_in(request, body, name, start)
    op = CreateCluster(**req.model_dump(exclude={"adopt_existing"}))
    return submit(request, response, op, actor, wait)


@router.post("/import", response_model=JobOut, status_code=202)
def import_cluster(request: Request, response: Response, body: bytes = Depends(_body),
                   actor: Actor = USER, wait: float = WAIT, name: str | None = None,
                   start: bool = True, adopt: bool = False) -> JobOut:
    """Create a cluster from an exported file; ``adopt`` takes over VMs named like nodes."""
    req = _cluster_in(request, body, name, start)
    if adopt:
        req.adopt_existing = True
    return submit(request, response, ImportCluster(**req.model_dump()), actor, wait)


@router.get("/{name}", response_model=ClusterDetail)
def show_cluster(request: Request, name: str, actor: Actor = GUEST) -> ClusterDetail:
    with manager_of(request).store.session() as s:
        row = records.visible_cluster(s, actor, name)
        spec = records.spec_of(row)
        nodes = records.nodes(s, name)
        nets = [{**n.model_dump(), "vni": records.vni_of(s, name, n.name)} for n in spec.networks]
        return ClusterDetail(**_summary(row, nodes), description=spec.description,
                             node_list=[NodeOut(**d) for d in records.describe_nodes(s, name)],
                             networks=nets)


@router.get("/{name}/export", response_class=Response, responses={200: {"content": {XML: {}}}})
def export_cluster(request: Request, name: str, actor: Actor = GUEST) -> Response:
    """The cluster as it is now, as XML that imports back as the same cluster."""
    with manager_of(request).store.session() as s:
        row = records.visible_cluster(s, actor, name)
        text = export_text(s, row)
    return Response(text, media_type=XML,
                    headers={"Content-Disposition": f'attachment; filename="{name}.xml"'})


@router.delete("/{name}", response_model=JobOut, status_code=202)
def delete_cluster(request: Request, response: Response, name: str, actor: Actor = USER,
                   wait: float = WAIT) -> JobOut:
    return submit(request, response, DeleteCluster(name=name), actor, wait)


@router.post("/{name}/scale", response_model=JobOut, status_code=202)
def scale_group(request: Request, response: Response, name: str, req: ScaleIn,
                actor: Actor = USER, wait: float = WAIT) -> JobOut:
    return submit(request, response, ScaleGroup(cluster=name, group=req.group, count=req.count),
                  actor, wait)


@router.post("/{name}/nodes/{node}/move", response_model=JobOut, status_code=202)
def move_node(request: Request, response: Response, name: str, node: str, req: MoveIn,
              actor: Actor = USER, wait: float = WAIT) -> JobOut:
    with manager_of(request).store.session() as s:
        row = records.visible_cluster(s, actor, name)
        if node not in {v.name for v in records.nodes(s, row.name)}:
            raise NotFound(f"cluster {name!r} has no node {node!r}")
    return submit(request, response, MoveNode(node=node, **req.model_dump()), actor, wait)


@router.post("/{name}/{action}", response_model=JobOut, status_code=202)
def cluster_action(request: Request, response: Response, name: str,
                   action: Literal["start", "stop", "suspend", "resume"], actor: Actor = USER,
                   wait: float = WAIT, group: str | None = None,
                   force: bool = Query(False, description="stop: pull the plug")) -> JobOut:
    """Start, stop, suspend or resume every node (or one group's) in parallel."""
    return submit(request, response, BatchAction(cluster=name, action=action, group=group,
                                                 force=force), actor, wait)


# -- profiles ---------------------------------------------------------------------------------
@profiles_router.get("", response_model=list[ProfileOut])
def get_profiles(request: Request, actor: Actor = GUEST) -> list[ProfileOut]:
    with manager_of(request).store.session() as s:
        return [ProfileOut(**p) for p in list_profiles(s)]


@profiles_router.get("/{name}", response_model=ProfileOut)
def get_profile(request: Request, name: str, actor: Actor = GUEST) -> ProfileOut:
    with manager_of(request).store.session() as s:
        for p in list_profiles(s):
            if p["name"] == name:
                return ProfileOut(**p)
    raise NotFound(f"no profile {name!r}")


@profiles_router.put("/{name}", response_model=ProfileOut)
def put_profile(request: Request, name: str, profile: Profile, actor: Actor = USER) -> ProfileOut:
    if profile.name != name:
        raise BadRequest(f"the body names profile {profile.name!r}, the path {name!r}")
    manager_of(request).submit(SaveProfile(profile=profile), actor)
    return get_profile(request, name, actor)


@profiles_router.delete("/{name}", status_code=204)
def delete_profile(request: Request, name: str, actor: Actor = USER) -> Response:
    manager_of(request).submit(DeleteProfile(name=name), actor)
    return Response(status_code=204)
