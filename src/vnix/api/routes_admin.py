"""/api/v1: login, tokens, hosts, images, users and quotas, metric samples."""
from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import delete, func, select

from vnix.api.deps import ADMIN, GUEST, current_actor, manager_of, require_node_or_admin
from vnix.api.models import (
    HostOut,
    ImageOut,
    JobOut,
    JoinToken,
    LoginIn,
    LoginOut,
    NewToken,
    QuotaIn,
    SamplesOut,
    TokenIn,
    TokenOut,
    Usage,
    UserOut,
    WhoAmI,
)
from vnix.api.routes_vms import WAIT, submit
from vnix.cluster import auth, metrics
from vnix.cluster.auth import Actor
from vnix.cluster.errors import Forbidden, NotFound
from vnix.cluster.manager import usage
from vnix.cluster.ops_admin import (
    CreateUser,
    DeleteUser,
    ImportImage,
    RegisterHost,
    RemoveHost,
    SetQuota,
)
from vnix.cluster.tables import ApiToken, Host, Image, User, Vm

router = APIRouter(tags=["admin"])


# -- login and tokens -------------------------------------------------------------------
@router.post("/login", response_model=LoginOut)
def login(request: Request, req: LoginIn) -> LoginOut:
    with manager_of(request).store.session() as s:
        token, user = auth.login(s, req.name, req.password,
                                 timedelta(days=req.ttl_days) if req.ttl_days else None)
        return LoginOut(token=token, user=user.name, role=user.role)


@router.get("/whoami", response_model=WhoAmI)
def whoami(actor: Actor = Depends(current_actor)) -> WhoAmI:
    return WhoAmI(user=actor.name, role=actor.role.value)


def _token_out(t: ApiToken) -> TokenOut:
    return TokenOut(id=t.id, user=t.user, name=t.name, created=t.created, expires=t.expires,
                    last_used=t.last_used)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(request: Request, actor: Actor = GUEST) -> list[TokenOut]:
    with manager_of(request).store.session() as s:
        q = select(ApiToken).order_by(ApiToken.id)
        if not actor.is_admin:
            q = q.where(ApiToken.user == actor.name)
        return [_token_out(t) for t in s.scalars(q)]


@router.post("/tokens", response_model=NewToken, status_code=201)
def create_token(request: Request, req: TokenIn, actor: Actor = GUEST) -> NewToken:
    """A new API token for yourself; the token is shown once, only its hash is kept."""
    with manager_of(request).store.session() as s:
        token = auth.issue_token(s, actor.name, req.name,
                                 timedelta(days=req.ttl_days) if req.ttl_days else None)
        s.flush()
        row = s.scalars(select(ApiToken).where(
            ApiToken.token_hash == auth.token_hash(token))).one()
        return NewToken(**_token_out(row).model_dump(), token=token)


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(request: Request, token_id: int, actor: Actor = GUEST) -> Response:
    with manager_of(request).store.session() as s:
        row = s.get(ApiToken, token_id)
        if row is None or (row.user != actor.name and not actor.is_admin):
            raise NotFound(f"no token {token_id}")
        s.delete(row)
    return Response(status_code=204)


# -- hosts ------------------------------------------------------------------------------
def _host_out(s: object, h: Host) -> HostOut:
    n, cpus, mem = s.execute(  # type: ignore[attr-defined]
        select(func.count(Vm.name), func.coalesce(func.sum(Vm.cpus), 0),
               func.coalesce(func.sum(Vm.memory_mib), 0))
        .where(Vm.host == h.name, Vm.desired != "deleted")).one()
    return HostOut(name=h.name, url=h.url, state=h.state, cpus=h.cpus, memory_mib=h.memory_mib,
                   memory_available_mib=h.memory_available_mib, cpu_percent=h.cpu_percent,
                   drivers=list(h.drivers or []), vms=n, used_cpus=cpus, used_memory_mib=mem,
                   last_seen=h.last_seen, detail=h.detail)


@router.get("/hosts", response_model=list[HostOut], tags=["hosts"])
def list_hosts(request: Request, actor: Actor = GUEST) -> list[HostOut]:
    with manager_of(request).store.session() as s:
        return [_host_out(s, h) for h in s.scalars(select(Host).order_by(Host.name))]


@router.get("/hosts/{name}", response_model=HostOut, tags=["hosts"])
def show_host(request: Request, name: str, actor: Actor = GUEST) -> HostOut:
    with manager_of(request).store.session() as s:
        h = s.get(Host, name)
        if h is None:
            raise NotFound(f"no host {name!r}")
        return _host_out(s, h)


@router.post("/hosts", response_model=HostOut, status_code=201, tags=["hosts"])
def register_host(request: Request, op: RegisterHost,
                  actor: Actor = Depends(require_node_or_admin)) -> HostOut:
    """Add a host (admins, or an agent with the join token: ``vnix agent --join``)."""
    manager = manager_of(request)
    manager.submit(op, actor)
    with manager.store.session() as s:
        return _host_out(s, s.get(Host, op.name))  # type: ignore[arg-type]


@router.delete("/hosts/{name}", status_code=204, tags=["hosts"])
def remove_host(request: Request, name: str, actor: Actor = ADMIN) -> Response:
    manager_of(request).submit(RemoveHost(name=name), actor)
    return Response(status_code=204)


@router.post("/hosts/join-token", response_model=JoinToken, tags=["hosts"])
def join_token(request: Request, actor: Actor = ADMIN) -> JoinToken:
    """A new join token for ``vnix agent --join`` (the old one stops working)."""
    return JoinToken(token=manager_of(request).new_join_token())


# -- images -----------------------------------------------------------------------------
@router.get("/images", response_model=list[ImageOut], tags=["images"])
def list_images(request: Request, actor: Actor = GUEST) -> list[ImageOut]:
    out: dict[str, ImageOut] = {}
    with manager_of(request).store.session() as s:
        for img in s.scalars(select(Image).order_by(Image.name, Image.host)):
            o = out.setdefault(img.name, ImageOut(name=img.name, kind=img.kind, size=img.size,
                                                  hosts=[]))
            o.hosts.append(img.host)
    return list(out.values())


@router.post("/images", response_model=JobOut, status_code=202, tags=["images"])
def import_image(request: Request, response: Response, op: ImportImage, actor: Actor = ADMIN,
                 wait: float = WAIT) -> JobOut:
    return submit(request, response, op, actor, wait)


# -- users ------------------------------------------------------------------------------
def _user_out(s: object, u: User) -> UserOut:
    n, cpus, mem = usage(s, u.name)
    return UserOut(name=u.name, role=u.role, max_vms=u.max_vms, max_cpus=u.max_cpus,
                   max_memory_mib=u.max_memory_mib, created=u.created,
                   usage=Usage(vms=n, cpus=cpus, memory_mib=mem))


@router.get("/users", response_model=list[UserOut], tags=["users"])
def list_users(request: Request, actor: Actor = ADMIN) -> list[UserOut]:
    with manager_of(request).store.session() as s:
        return [_user_out(s, u) for u in s.scalars(select(User).order_by(User.name))]


@router.get("/users/{name}", response_model=UserOut, tags=["users"])
def show_user(request: Request, name: str, actor: Actor = GUEST) -> UserOut:
    if name != actor.name and not actor.is_admin:
        raise Forbidden(f"{actor.role.value} {actor.name!r} may only look at themself")
    with manager_of(request).store.session() as s:
        u = s.get(User, name)
        if u is None:
            raise NotFound(f"no user {name!r}")
        return _user_out(s, u)


@router.post("/users", response_model=UserOut, status_code=201, tags=["users"])
def create_user(request: Request, op: CreateUser, actor: Actor = ADMIN) -> UserOut:
    manager = manager_of(request)
    manager.submit(op, actor)
    with manager.store.session() as s:
        return _user_out(s, s.get(User, op.name))  # type: ignore[arg-type]


@router.delete("/users/{name}", status_code=204, tags=["users"])
def delete_user(request: Request, name: str, actor: Actor = ADMIN) -> Response:
    manager_of(request).submit(DeleteUser(name=name), actor)
    return Response(status_code=204)


@router.put("/users/{name}/quota", response_model=UserOut, tags=["users"])
def set_quota(request: Request, name: str, req: QuotaIn, actor: Actor = ADMIN) -> UserOut:
    manager = manager_of(request)
    manager.submit(SetQuota(name=name, **req.model_dump()), actor)
    with manager.store.session() as s:
        return _user_out(s, s.get(User, name))  # type: ignore[arg-type]


@router.delete("/users/{name}/tokens", status_code=204, tags=["users"])
def revoke_user_tokens(request: Request, name: str, actor: Actor = ADMIN) -> Response:
    with manager_of(request).store.session() as s:
        if s.get(User, name) is None:
            raise NotFound(f"no user {name!r}")
        s.execute(delete(ApiToken).where(ApiToken.user == name))
    return Response(status_code=204)


# -- metric samples (the writer is the collector; issue 7 builds the graphs) -------------
@router.get("/samples/{kind}/{name}/{metric}", response_model=SamplesOut, tags=["metrics"])
def samples(request: Request, kind: str, name: str, metric: str, actor: Actor = GUEST,
            since: datetime | None = None, step: int = Query(0, ge=0)) -> SamplesOut:
    if kind not in ("host", "vm"):
        raise NotFound(f"no sample kind {kind!r} (host or vm)")
    with manager_of(request).store.session() as s:
        if kind == "vm":
            vm = s.get(Vm, name)
            if vm is not None and not actor.may_see(vm.owner):
                raise NotFound(f"no VM {name!r}")
        points = metrics.series(s, kind, name, metric, since, step)
    return SamplesOut(kind=kind, name=name, metric=metric, points=points)

