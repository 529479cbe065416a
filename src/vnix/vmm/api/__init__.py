"""The native VMM's control API: HTTP/1.1 + JSON on a Unix socket (``--api-sock PATH``).

* :mod:`vnix.vmm.api.http`    the small bounded HTTP server (stdlib ``socket`` only)
* :mod:`vnix.vmm.api.routes`  the routes and what they do to the machine
* :mod:`vnix.vmm.api.openapi` the OpenAPI 3 document served at ``GET /openapi.json``
* :mod:`vnix.vmm.api.client`  the client the CLI (``vnix vmm``) and the native driver use
  (httpx; never imported by the VMM process)

The VMM imports only :func:`serve`, after the machine is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vnix.vmm.api.http import UnixHttpServer
    from vnix.vmm.machine import Machine


def serve(machine: Machine, path: str) -> UnixHttpServer:
    """Serve the control API of ``machine`` on the Unix socket ``path`` (daemon threads)."""
    from vnix.vmm.api.http import UnixHttpServer
    from vnix.vmm.api.routes import ControlApi

    server = UnixHttpServer(path, ControlApi(machine))
    server.start()
    machine.api = server
    return server
