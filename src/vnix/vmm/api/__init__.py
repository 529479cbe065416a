"""The native VMM's control API: HTTP/1.1 + JSON on a Unix socket (``--api-sock PATH``).

* :mod:`vnix.vmm.api.http`    the small bounded HTTP server (stdlib ``socket`` only)
* :mod:`vnix.vmm.api.routes`  the routes and what they do to the machine
* :mod:`vnix.vmm.api.openapi` the OpenAPI 3 document served at ``GET /openapi.json``
* :mod:`vnix.vmm.api.client`  the client the CLI (``vnix vmm``) and the native driver use
  (httpx; never imported by the VMM process)

The VMM binds the socket with :func:`listen` once the machine is built (a bad path is a start-up
error) and imports the server with :func:`serve` only after the boot vCPU's first KVM_RUN, so the
API's modules (``json``, the routes) are not on the way to the guest's first instruction. A
client that connects in between waits in the listen backlog and is answered once served.
"""
from __future__ import annotations

import os

import _socket  # not ``socket``: its wrapper module costs the VMM ~2 ms of start-up

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from vnix.vmm.api.http import UnixHttpServer
    from vnix.vmm.machine import Machine

BACKLOG = 64  # waiting connections; beyond that connect() fails with EAGAIN


def listen(path: str) -> _socket.socket:
    """A listening Unix socket at ``path`` (a stale socket file is replaced; mode 0600: the
    control socket is its owner's only). Connections queue until :func:`serve`. Raises OSError."""
    if os.path.exists(path):
        os.unlink(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def serve(machine: Machine, path: str, sock: _socket.socket | None = None) -> UnixHttpServer:
    """Serve the control API of ``machine`` on the Unix socket ``path`` (daemon threads);
    ``sock``: the socket :func:`listen` bound there already (else it is bound now)."""
    from vnix.vmm.api.http import UnixHttpServer
    from vnix.vmm.api.routes import ControlApi

    server = UnixHttpServer(path, ControlApi(machine))
    server.start(sock)
    machine.api = server
    return server
