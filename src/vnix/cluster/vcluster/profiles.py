"""Saved VMM configuration profiles: named sets of vCPUs, memory, driver, accelerator, VNC and
kernel command line that cluster groups refer to (``<group profile="...">``).

Profiles are kept in the store's settings as ``profile:<name>`` (JSON with the owner). Any
user may save one; only its owner or an admin may change or delete it, and one that a cluster
uses (without its own inline copy) cannot be deleted. Exported clusters carry the profiles they
use, so they import on another manager as they are.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from vnix.cluster.auth import Actor, Role
from vnix.cluster.errors import Conflict, Forbidden, NotFound
from vnix.cluster.operations import JobContext, OpContext, Operation, register
from vnix.cluster.tables import Cluster
from vnix.cluster.vcluster import records
from vnix.cluster.vcluster.model import Profile


def users_of(s: Session, name: str) -> list[str]:
    """Clusters whose groups use saved profile ``name`` (not an inline one of that name)."""
    out = []
    for row in s.scalars(select(Cluster)):
        spec = records.spec_of(row)
        inline = {p.name for p in spec.profiles}
        if name not in inline and any(g.profile == name for g in spec.groups):
            out.append(row.name)
    return sorted(out)


def list_profiles(s: Session) -> list[dict[str, Any]]:
    return [{"owner": records.profile_owner(s, n), **p.model_dump(mode="json"),
             "used_by": users_of(s, n)} for n, p in sorted(records.saved_profiles(s).items())]


def _may_change(s: Session, actor: Actor, name: str) -> None:
    owner = records.profile_owner(s, name)
    if owner is not None and owner != actor.name and not actor.is_admin:
        raise Forbidden(f"profile {name!r} belongs to {owner}")


@register
class SaveProfile(Operation):
    kind: Literal["save_profile"] = "save_profile"
    profile: Profile
    inline: ClassVar[bool] = True

    def describe(self) -> str:
        return f"save profile {self.profile.name}"

    def target(self) -> str:
        return f"profile/{self.profile.name}"

    def check(self, ctx: OpContext) -> None:
        _may_change(ctx.session, ctx.actor, self.profile.name)

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.session() as s:
            owner = records.profile_owner(s, self.profile.name) or ctx.actor.name
            records.put_profile(s, self.profile, owner)
        return {"profile": self.profile.name}


@register
class DeleteProfile(Operation):
    kind: Literal["delete_profile"] = "delete_profile"
    name: str
    inline: ClassVar[bool] = True
    min_role: ClassVar[Role] = Role.USER

    def describe(self) -> str:
        return f"delete profile {self.name}"

    def target(self) -> str:
        return f"profile/{self.name}"

    def check(self, ctx: OpContext) -> None:
        s = ctx.session
        if self.name not in records.saved_profiles(s):
            raise NotFound(f"no profile {self.name!r}")
        _may_change(s, ctx.actor, self.name)
        used = users_of(s, self.name)
        if used:
            raise Conflict(f"profile {self.name!r} is used by cluster(s) {', '.join(used)}")

    def run(self, ctx: JobContext) -> dict[str, Any] | None:
        with ctx.session() as s:
            records.drop_profile(s, self.name)
        return {"profile": self.name, "deleted": True}
