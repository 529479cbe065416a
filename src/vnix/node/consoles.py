"""Consoles over WebSocket.

* ``/vms/{name}/console/ws``: the serial console. Output is streamed from the driver's console
  record (``console_read`` from an offset, so a client sees what the guest printed before it
  connected, and nothing is lost while no client or agent runs); what the client sends is typed
  into the guest (``console_write``). ``?offset=N`` starts elsewhere (``-1``: only new output).
* ``/vms/{name}/vnc/ws``: a byte relay to the VM's VNC socket (what noVNC's websockify does):
  binary frames both ways, the ``binary`` subprotocol when the client offers it.

Browsers cannot set headers on a WebSocket, so the token comes as ``Authorization: Bearer`` or
as ``?token=``.
"""
from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from vnix.errors import VnixError
from vnix.node.vms import VmService

POLL_S = 0.1


def _authorized(ws: WebSocket, token: str) -> bool:
    given = ws.query_params.get("token") or ""
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:]
    return hmac.compare_digest(given.encode(), token.encode())


def console_router(vms: VmService, token: str) -> APIRouter:
    router = APIRouter()

    @router.websocket("/vms/{name}/console/ws")
    async def serial(ws: WebSocket, name: str, offset: int = 0) -> None:
        if not _authorized(ws, token):
            await ws.close(code=4401, reason="bad token")
            return
        try:
            drv = await run_in_threadpool(vms.driver_of, name)
        except VnixError as exc:
            await ws.close(code=4404, reason=str(exc)[:120])
            return
        await ws.accept()
        if offset < 0:
            _, offset = await run_in_threadpool(drv.console_read, name, 0)

        async def pump_out() -> None:
            nonlocal offset
            while True:
                data, offset = await run_in_threadpool(drv.console_read, name, offset)
                if data:
                    await ws.send_bytes(data)
                else:
                    await asyncio.sleep(POLL_S)

        out = asyncio.create_task(pump_out())
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes") or (msg.get("text") or "").encode()
                if data:
                    try:
                        await run_in_threadpool(drv.console_write, name, data)
                    except VnixError as exc:
                        await ws.send_text(f"\r\n[vnix: {exc}]\r\n")
        except WebSocketDisconnect:
            pass
        finally:
            out.cancel()

    @router.websocket("/vms/{name}/vnc/ws")
    async def vnc(ws: WebSocket, name: str) -> None:
        if not _authorized(ws, token):
            await ws.close(code=4401, reason="bad token")
            return
        try:
            drv = await run_in_threadpool(vms.driver_of, name)
            address = await run_in_threadpool(drv.vnc_address, name)
            if address is None:
                raise VnixError(f"VM {name!r} has no VNC display")
            if address.startswith("unix:"):
                reader, writer = await asyncio.open_unix_connection(address[5:])
            else:
                host, _, port = address.rpartition(":")
                reader, writer = await asyncio.open_connection(host, int(port))
        except (VnixError, OSError) as exc:
            await ws.close(code=4404, reason=str(exc)[:120])
            return
        offered = ws.headers.get("sec-websocket-protocol", "")
        await ws.accept(subprotocol="binary" if "binary" in offered else None)

        async def vnc_to_ws() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(data)
            await ws.close()

        task = asyncio.create_task(vnc_to_ws())
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                writer.write(msg.get("bytes") or (msg.get("text") or "").encode())
                await writer.drain()
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass
        finally:
            task.cancel()
            writer.close()

    return router
