"""The manager's console proxy: /api/v1/vms/{name}/console/ws and /api/v1/vms/{name}/vnc/ws.

The browser never talks to an agent: it opens a WebSocket to the manager, which checks the
caller's role here (the same rules as the REST routes) and relays frames to the VM's agent
(``vnix.node.consoles``), with the agent's token, which the browser never sees.

* serial console: anyone who may see the VM may watch it; typing needs the right to change
  it (the VM's owner or an admin) — for a guest the stream is read-only (input dropped,
  one notice shown). ``?offset=N`` is passed on (``-1``: only new output).
* VNC: the owner or an admin (a VNC client must write to the server, so no read-only mode);
  the ``binary`` subprotocol is kept when the browser offers it (noVNC does).

The token comes as ``Authorization: Bearer``, ``?token=`` or the dashboard's session cookie.
Refusals close the socket before it opens with 4401 (no/bad token), 4403 (role), 4404 (no
such VM), 4409 (VM has no console yet), 4502 (its agent did not answer).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from vnix.cluster.auth import Role, authenticate
from vnix.cluster.errors import ClusterError, Forbidden, NotFound, Unauthorized
from vnix.cluster.ops_vm import visible_vm
from vnix.cluster.tables import Host

log = logging.getLogger(__name__)
router = APIRouter(prefix="/vms", tags=["vms"])
COOKIE = "vnix_token"  # the dashboard's session cookie (vnix.web.session.COOKIE)
NO_CONSOLE_YET = frozenset({"creating", "pending", "missing"})
READ_ONLY_NOTICE = b"\r\n[vnix: read-only console: your role may not type here]\r\n"


@dataclass(frozen=True)
class Target:
    url: str  # the agent's ws:// URL of this console
    token: str  # the agent's token
    writable: bool


class Refused(ClusterError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _token(ws: WebSocket) -> str:
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return ws.query_params.get("token") or ws.cookies.get(COOKIE) or ""


def _target(ws: WebSocket, name: str, what: str) -> Target:
    """Who asks, may they, and where the console is; Refused with the close code if not."""
    manager = ws.app.state.manager
    token = _token(ws)
    if not token:
        raise Refused(4401, "missing API token")
    try:
        with manager.store.session() as s:
            actor = authenticate(s, token)
            if actor.role is Role.NODE:
                raise Forbidden("a join token cannot open consoles")
            vm = visible_vm(s, actor, name)
            writable = actor.may_touch(vm.owner)
            if what == "vnc" and not writable:
                raise Forbidden(f"{actor.role.value} {actor.name!r} may not use the VNC "
                                f"display of VM {name!r}")
            if vm.host is None or vm.actual in NO_CONSOLE_YET:
                raise Refused(4409, f"VM {name!r} has no console yet: it is {vm.actual}")
            host = s.get(Host, vm.host)
            if host is None or host.state != "up":
                raise Refused(4502, f"the host of VM {name!r} is down")
            base = host.url.rstrip("/")
    except Unauthorized as exc:
        raise Refused(4401, str(exc)) from None
    except Forbidden as exc:
        raise Refused(4403, str(exc)) from None
    except NotFound as exc:
        raise Refused(4404, str(exc)) from None
    ws_base = "ws" + base[4:] if base.startswith("http") else base
    return Target(f"{ws_base}/vms/{name}/{what}/ws", host.token, writable)


async def _relay(ws: WebSocket, target: Target, query: str, binary: bool) -> None:
    offered = ws.headers.get("sec-websocket-protocol", "")
    sub = "binary" if binary and "binary" in offered else None
    url = target.url + (f"?{query}" if query else "")
    try:
        upstream = await connect(url, additional_headers={
            "Authorization": f"Bearer {target.token}"}, subprotocols=["binary"] if sub else None,
            max_size=None, compression=None, open_timeout=10, proxy=None)
    except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
        log.warning("console proxy: %s: %s", target.url, exc)
        await ws.close(code=4502, reason=f"the agent refused the console: {exc}"[:120])
        return
    await ws.accept(subprotocol=sub)
    told = False

    async def down() -> None:
        async for msg in upstream:
            if isinstance(msg, bytes):
                await ws.send_bytes(msg)
            else:
                await ws.send_text(msg)

    async def up() -> None:
        nonlocal told
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                data = (msg.get("text") or "").encode()
            if not target.writable:
                if not told:
                    told = True
                    await ws.send_bytes(READ_ONLY_NOTICE)
                continue
            await upstream.send(data)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect,
                                     WebSocketException, RuntimeError, OSError):
                await t
        await upstream.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close()


async def _open(ws: WebSocket, name: str, what: str) -> None:
    try:
        target = await run_in_threadpool(_target, ws, name, what)
    except Refused as exc:
        await ws.close(code=exc.code, reason=str(exc)[:120])
        return
    query = ""
    if what == "console" and "offset" in ws.query_params:
        try:
            query = f"offset={int(ws.query_params['offset'])}"
        except ValueError:
            await ws.close(code=4400, reason="offset must be an integer")
            return
    await _relay(ws, target, query, binary=what == "vnc")


@router.websocket("/{name}/console/ws")
async def console_ws(ws: WebSocket, name: str) -> None:
    """The VM's serial console: output as binary frames, what is sent is typed."""
    await _open(ws, name, "console")


@router.websocket("/{name}/vnc/ws")
async def vnc_ws(ws: WebSocket, name: str) -> None:
    """The VM's VNC display as a byte stream (for noVNC)."""
    await _open(ws, name, "vnc")
