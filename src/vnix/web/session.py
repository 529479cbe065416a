"""Who is looking at a page: the API token kept in a cookie, and the CSRF check of actions.

Logging in on the page issues an ordinary API token (``vnix.cluster.auth.login``) and keeps
it in an HttpOnly, SameSite=Strict cookie; every page and action authenticates it exactly as
the REST API authenticates a bearer token, so roles hold the same way. Actions (POST) also
need the ``X-CSRF-Token`` header (htmx sends it from the page) or a ``csrf`` form field whose
value is derived from the token: another site can neither read nor forge it.
"""
from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from vnix.cluster.auth import Actor, Role, authenticate
from vnix.cluster.errors import ClusterError, Forbidden, Unauthorized
from vnix.cluster.manager import Manager

COOKIE = "vnix_token"
CSRF_HEADER = "x-csrf-token"


class LoginRequired(ClusterError):
    """No valid session: pages answer with a redirect to /login."""


def manager_of(request: Request) -> Manager:
    manager: Manager = request.app.state.manager
    return manager


def token_of(request: Request) -> str | None:
    """The API token of a page request: the cookie, else a bearer header (scripts)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def csrf_of(token: str) -> str:
    return hashlib.sha256(b"vnix-csrf:" + token.encode()).hexdigest()[:32]


def page_actor(request: Request) -> Actor:
    """The logged-in actor of a page (LoginRequired -> redirect to the login page)."""
    token = token_of(request)
    if not token:
        raise LoginRequired("log in first")
    manager = manager_of(request)
    try:
        with manager.store.session() as s:
            actor = authenticate(s, token)
    except Unauthorized as exc:
        raise LoginRequired(str(exc)) from None
    if actor.role is Role.NODE:
        raise LoginRequired("a join token cannot open the dashboard")
    request.state.token = token
    return actor


async def action_actor(request: Request) -> Actor:
    """The actor of an action (POST): logged in, with the CSRF token of its session."""
    actor = page_actor(request)
    token: str = request.state.token
    given = request.headers.get(CSRF_HEADER, "")
    if not given and "form" in request.headers.get("content-type", ""):
        given = str((await request.form()).get("csrf", ""))
    if request.cookies.get(COOKIE) == token and not hmac.compare_digest(given, csrf_of(token)):
        raise Forbidden("missing or wrong CSRF token: reload the page")
    return actor
