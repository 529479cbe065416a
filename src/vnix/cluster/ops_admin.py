"""Administrative operations: hosts, images on hosts, users, quotas.

Most run inline (in the caller's thread, still recorded as jobs: the job list doubles as an
audit log). Secrets (``secret_fields``: passwords, agent tokens) are stored as ``***`` in
the job row. API tokens are credentials, not operations: ``vnix.api`` issues them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field
from sqlalchemy import delete, select

from vnix.cluster.agents import call_many
from vnix.cluster.auth import (
    Actor,
    Role,
    check_name,
    check_password,
    hash_password,
)
from vnix.cluster.errors import AgentError, BadRequest, Conflict, NotFound
from vnix.cluster.operations import JobContext, OpContext, Operation, register
from vnix.cluster.tables import ApiToken, Host, Image, User, Vm, utcnow
from vnix.node import models as agent


@register
class RegisterHost(Operation):
    """Add a host (or update the URL/token of one that re-joins). Asks its agent first."""

    kind: Literal["register_host"] = "register_host"
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")
    url: str = Field(pattern=r"^https?://")
    token: str = Field(min_length=1, repr=False)
    min_role: ClassVar[Role] = Role.ADMIN
    inline: ClassVar[bool] = True
    secret_fields: ClassVar[frozenset[str]] = frozenset({"token"})

    @classmethod
    def allowed(cls, actor: Actor) -> bool:
        return actor.role in (Role.ADMIN, Role.NODE)

    def describe(self) -> str:
        return f"register host {self.name}"

    def target(self) -> str:
        return f"host/{self.name}"

    def check(self, ctx: OpContext) -> None:
        client = ctx.manager.agent_for(self.name, self.url, self.token)
        try:
            info: agent.HostOut = client.call("host")
            images: list[agent.ImageOut] = client.call("list_images")
        except AgentError as exc:
            raise BadRequest(f"cannot register host {self.name}: its agent at {self.url} "
                             f"did not answer: {exc.message}") from None
        s = ctx.session
        row = s.get(Host, self.name) or Host(name=self.name, drivers=[], detail="")
        row.url, row.token, row.state, row.last_seen = self.url, self.token, "up", utcnow()
        row.cpus, row.memory_mib = info.cpus, info.memory_total_mib
        row.cpu_percent, row.memory_available_mib = info.cpu_percent, info.memory_available_mib
        row.drivers = info.drivers
        s.add(row)
        s.flush()
        sync_images(s, self.name, images)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        return {"host": self.name}


def sync_images(s: Any, host: str, images: list[agent.ImageOut], *, asked: datetime | None = None) -> None:
    """Make the images table say what ``host``'s agent listed. Each row is an upsert (INSERT ...
    ON CONFLICT DO UPDATE, SQLite and PostgreSQL alike): the monitor's poll and an import job can
    sync the same host at once, and two plain INSERTs of one new image failed the second
    transaction on the primary key. ``asked``: when the list was asked for; a row another
    session saw later (a job's newer word) is not deleted for missing from this older list."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    now = utcnow()
    for img in images:
        values = {"kind": img.kind, "size": img.size, "virtual_size": img.virtual_size, "seen": now}
        s.execute(insert(Image).values(host=host, name=img.name, **values)
                  .on_conflict_do_update(index_elements=[Image.host, Image.name], set_=values))
    gone = delete(Image).where(Image.host == host, Image.name.not_in([img.name for img in images]))
    if asked is not None:
        gone = gone.where(Image.seen < asked)
    s.execute(gone.execution_options(synchronize_session=False))
    for obj in list(s.identity_map.values()):
        if isinstance(obj, Image):
            s.expire(obj)  # read again if used: the rows changed under the ORM


@register
class RemoveHost(Operation):
    kind: Literal["remove_host"] = "remove_host"
    name: str
    min_role: ClassVar[Role] = Role.ADMIN
    inline: ClassVar[bool] = True

    def describe(self) -> str:
        return f"remove host {self.name}"

    def target(self) -> str:
        return f"host/{self.name}"

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        if s.get(Host, self.name) is None:
            raise NotFound(f"no host {self.name!r}")
        vms = sorted(s.scalars(select(Vm.name).where(Vm.host == self.name)))
        if vms:
            raise Conflict(f"host {self.name} still holds VM(s) {', '.join(vms[:10])}: "
                           "delete them first")
        s.execute(delete(Image).where(Image.host == self.name))
        s.delete(s.get(Host, self.name))


@register
class ImportImage(Operation):
    """Import an image on one host or on every host that is up (e.g. the tiny guest)."""

    kind: Literal["import_image"] = "import_image"
    image: agent.ImportImage
    host: str | None = None
    min_role: ClassVar[Role] = Role.ADMIN

    def describe(self) -> str:
        return f"import image {self.image.name}"

    def target(self) -> str:
        return f"image/{self.image.name}"

    def check(self, ctx: OpContext) -> None:
        if self.host and ctx.session.get(Host, self.host) is None:
            raise NotFound(f"no host {self.host!r}")

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.session() as s:
            hosts = [h.name for h in s.scalars(select(Host).where(Host.state == "up"))
                     if self.host in (None, h.name)]
        results = call_many({h: ctx.agent(h) for h in hosts}, "import_image", self.image)
        ok = []
        for h, r in results.items():
            if r.ok or r.status == 409:  # 409: the host has it already
                ok.append(h)
                with ctx.session() as s:
                    sync_images(s, h, ctx.agent(h).call("list_images"))
            ctx.log(f"{h}: {'imported' if r.ok else r.error}")
        if not ok:
            raise AgentError(",".join(hosts) or "-", "no host imported the image: " +
                             "; ".join(f"{h}: {r.error}" for h, r in results.items()))
        return {"hosts": ok}


class _Quota(Operation):
    max_vms: int | None = Field(None, ge=0)
    max_cpus: int | None = Field(None, ge=0)
    max_memory: str | None = Field(None, description="256M, 8G, ...")

    def memory_mib(self) -> int | None:
        if self.max_memory is None:
            return None
        from vnix.vmm.config import parse_size_mib

        try:
            return parse_size_mib(self.max_memory)
        except Exception as exc:
            raise BadRequest(str(exc)) from None


@register
class CreateUser(_Quota):
    kind: Literal["create_user"] = "create_user"
    name: str
    password: str = Field(repr=False)
    role: Literal["admin", "user", "guest"] = "user"
    min_role: ClassVar[Role] = Role.ADMIN
    inline: ClassVar[bool] = True
    secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    def describe(self) -> str:
        return f"create user {self.name}"

    def target(self) -> str:
        return f"user/{self.name}"

    def check(self, ctx: OpContext) -> None:
        check_name(self.name)
        check_password(self.password)
        if ctx.session.get(User, self.name) is not None:
            raise Conflict(f"user {self.name!r} exists already")
        ctx.session.add(User(name=self.name, password_hash=hash_password(self.password),
                             role=self.role, max_vms=self.max_vms, max_cpus=self.max_cpus,
                             max_memory_mib=self.memory_mib()))


@register
class SetQuota(_Quota):
    kind: Literal["set_quota"] = "set_quota"
    name: str
    clear: bool = Field(False, description="remove the limits not given")
    min_role: ClassVar[Role] = Role.ADMIN
    inline: ClassVar[bool] = True

    def describe(self) -> str:
        return f"set the quota of {self.name}"

    def target(self) -> str:
        return f"user/{self.name}"

    def check(self, ctx: OpContext) -> None:
        user = ctx.session.get(User, self.name)
        if user is None:
            raise NotFound(f"no user {self.name!r}")
        mem = self.memory_mib()
        for attr, value in (("max_vms", self.max_vms), ("max_cpus", self.max_cpus),
                            ("max_memory_mib", mem)):
            if value is not None or self.clear:
                setattr(user, attr, value)


@register
class DeleteUser(Operation):
    kind: Literal["delete_user"] = "delete_user"
    name: str
    min_role: ClassVar[Role] = Role.ADMIN
    inline: ClassVar[bool] = True

    def describe(self) -> str:
        return f"delete user {self.name}"

    def target(self) -> str:
        return f"user/{self.name}"

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        user = s.get(User, self.name)
        if user is None:
            raise NotFound(f"no user {self.name!r}")
        if self.name == ctx.actor.name:
            raise Conflict("you cannot delete yourself")
        vms = sorted(s.scalars(select(Vm.name).where(Vm.owner == self.name)))
        if vms:
            raise Conflict(f"user {self.name} still owns VM(s) {', '.join(vms[:10])}")
        s.execute(delete(ApiToken).where(ApiToken.user == self.name))
        s.delete(user)
