"""Synchronous QMP calls over QEMU's own ``qemu.qmp`` library.

Each call connects to the VM's QMP socket, negotiates, runs its commands and disconnects, in a
private event loop: the driver stays synchronous, any thread may call it, and no connection is
held that would keep another client (a restarted agent, a human with ``qmp-shell``) out.
Errors become :class:`~vnix.hypervisor.errors.VmProcessError` (or :class:`QmpCommandError` when
QEMU answered with an error).
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from vnix.hypervisor.errors import VmProcessError


class QmpCommandError(VmProcessError):
    """QEMU answered a command with an error (its class and description are in the message)."""


async def _run(path: str, commands: Sequence[tuple[str, dict[str, Any] | None]],
               timeout: float) -> list[Any]:
    client = QMPClient("vnix")
    try:
        await asyncio.wait_for(client.connect(path), timeout)
        results = []
        for name, args in commands:
            results.append(await asyncio.wait_for(client.execute(name, args), timeout))
        return results
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except (QMPError, OSError, EOFError, asyncio.TimeoutError):
            pass


def qmp_batch(path: str, commands: Sequence[tuple[str, dict[str, Any] | None]],
              timeout: float = 10.0) -> list[Any]:
    """Run ``commands`` in order on one connection; return their results."""
    try:
        return asyncio.run(_run(path, commands, timeout))
    except ExecuteError as exc:
        raise QmpCommandError(f"QEMU refused {exc.sent.get('execute')}: {exc.error.desc}") from None
    except (ConnectError, OSError) as exc:
        raise VmProcessError(f"cannot reach QEMU's QMP socket {path}: {exc}") from None
    except asyncio.TimeoutError:
        raise VmProcessError(f"QEMU's QMP socket {path} did not answer in {timeout:g}s") from None
    except (QMPError, EOFError) as exc:  # EOF: QEMU hung up (it does after 'quit')
        raise VmProcessError(f"QMP error on {path}: {exc!r}") from None


def qmp(path: str, command: str, args: dict[str, Any] | None = None,
        timeout: float = 10.0) -> Any:
    """One QMP command; its ``return`` value."""
    return qmp_batch(path, [(command, args)], timeout)[0]
