"""Route dependencies: who is asking (bearer API token) and whether their role may.

Every route of the API declares one of these (the role table test walks them all)::

    @router.get("/vms")
    def list_vms(actor: Actor = Depends(require_role(Role.GUEST))) -> ...

    @router.post("/vms/{name}/start")
    def start(actor: Actor = Depends(require_role(Role.USER))) -> ...

``require_role(role)`` answers 401 without a valid token and 403 when the role is lower;
``manager_of(request)`` is the :class:`~vnix.cluster.manager.Manager` behind the app.
"""
from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vnix.cluster.auth import Actor, Role, authenticate
from vnix.cluster.errors import Forbidden, Unauthorized
from vnix.cluster.manager import Manager

bearer = HTTPBearer(auto_error=False, description="an API token from POST /api/v1/login")


def manager_of(request: Request) -> Manager:
    manager: Manager = request.app.state.manager
    return manager


def current_actor(request: Request,
                  cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Actor:
    if cred is None:
        raise Unauthorized("missing API token: log in first (vnix login)")
    manager = manager_of(request)
    with manager.store.session() as s:
        return authenticate(s, cred.credentials, manager.join_token_hash())


def require_role(role: Role) -> Callable[..., Actor]:
    """A dependency returning the actor if its role is at least ``role`` (403 otherwise)."""

    def dependency(actor: Actor = Depends(current_actor)) -> Actor:
        if actor.role is Role.NODE or not actor.role.at_least(role):
            raise Forbidden(f"{actor.role.value} {actor.name!r} may not do this "
                            f"(needs role {role.value})")
        return actor

    dependency.__name__ = f"require_{role.value}"
    return dependency


def require_node_or_admin(actor: Actor = Depends(current_actor)) -> Actor:
    if actor.role not in (Role.NODE, Role.ADMIN):
        raise Forbidden(f"{actor.role.value} {actor.name!r} may not register hosts")
    return actor


GUEST = Depends(require_role(Role.GUEST))
USER = Depends(require_role(Role.USER))
ADMIN = Depends(require_role(Role.ADMIN))
