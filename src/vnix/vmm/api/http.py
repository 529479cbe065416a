"""A small HTTP/1.1 server on a Unix stream socket, for the VMM's control API.

The VMM process must start fast and stay small, so this is neither ``http.server`` (which
imports ``email``, ``html``, ``mimetypes``...) nor a framework: one accept thread, one short
thread per connection, one request per connection (``Connection: close``), everything bounded:

=================  =========  ======================================================
limit              value      answer when exceeded
=================  =========  ======================================================
request head       8 KiB      431 (request line and headers together)
header lines       64         431
body               64 KiB     413 (``Content-Length`` only; chunked bodies get 411)
connections        16         the next 64 wait (listen backlog); more: connect fails
read timeout       5 s        the connection is closed (408 if part of a request came)
=================  =========  ======================================================

A request line or header that is not HTTP/1.x gets 400; every answer is JSON
(``{"error": "..."}`` for errors). A handler bug is answered 500 and logged on stderr; it never
ends the VMM.
"""
from __future__ import annotations

import json
import os
import sys
import threading

import _socket  # not ``socket``: its wrapper module costs the VMM ~2 ms of start-up (see console.py)

TYPE_CHECKING = False  # typing is not imported at run time (mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_HEAD = 8 * 1024
MAX_HEADERS = 64
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 16
READ_TIMEOUT = 5.0

REASONS = {
    200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}


class Request:
    """One parsed request (a plain class: dataclasses cost the VMM start-up time)."""

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body


class Response:
    """``after`` runs once the answer is sent (a forced stop ends the process: answer first)."""

    def __init__(self, status: int, payload: object, headers: dict[str, str] | None = None,
                 after: Callable[[], None] | None = None) -> None:
        self.status, self.payload, self.headers, self.after = status, payload, headers or {}, after


class HttpError(Exception):
    """A request the server answers with an error status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


if TYPE_CHECKING:
    Handler = Callable[[Request], Response]


def encode(response: Response) -> bytes:
    body = json.dumps(response.payload, separators=(",", ":")).encode() + b"\n"
    head = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
            "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_request(conn: _socket.socket) -> Request | None:
    """Read one request; None if the client closed before sending anything. Raises HttpError."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise HttpError(431, f"request head over {MAX_HEAD} bytes")
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            raise HttpError(408, "timed out reading the request") if buf else HttpError(0, "idle")
        if not chunk:
            if not buf:
                return None
            raise HttpError(400, "the request ended inside its head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise HttpError(431, f"request head over {MAX_HEAD} bytes")
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise HttpError(400, "the request head is not ASCII") from None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/") \
            or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, _version = parts
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(411, "send the body with Content-Length (chunked bodies are not accepted)")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, f"bad Content-Length {length_text[:20]!r}")
    length = int(length_text)
    if length > MAX_BODY:
        raise HttpError(413, f"request body over {MAX_BODY} bytes")
    body = rest
    while len(body) < length:
        try:
            chunk = conn.recv(min(65536, length - len(body)))
        except TimeoutError:
            raise HttpError(408, "timed out reading the request body") from None
        if not chunk:
            raise HttpError(400, "the request ended inside its body")
        body += chunk
    if len(body) > length:
        raise HttpError(400, "more bytes than Content-Length (one request per connection)")
    path, _, query = target.partition("?")
    return Request(method, path, query, headers, body)


class UnixHttpServer:
    """Serves ``handler`` on the Unix socket ``path`` from daemon threads."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._sock: _socket.socket | None = None
        self.requests = 0

    def start(self, sock: _socket.socket | None = None) -> None:
        """Serve on ``sock``, a socket already listening at ``path``, or else bind one there
        (:func:`vnix.vmm.api.listen`: a stale socket file is replaced). Raises OSError."""
        if sock is None:
            from vnix.vmm.api import listen

            sock = listen(self.path)
        self._sock = sock
        threading.Thread(target=self._accept, name="api-accept", daemon=True).start()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                fd, _ = self._sock._accept()  # type: ignore[attr-defined]
            except OSError:
                return
            conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            self._slots.acquire()  # at most MAX_CONNECTIONS served; the rest wait their turn
            threading.Thread(target=self._serve, args=(conn,), name="api-conn", daemon=True).start()

    def _serve(self, conn: _socket.socket) -> None:
        try:
            conn.settimeout(READ_TIMEOUT)
            try:
                request = read_request(conn)
            except HttpError as exc:
                if exc.status:
                    _send(conn, Response(exc.status, {"error": str(exc)}))
                    _drain(conn)
                return
            if request is None:
                return
            self.requests += 1
            try:
                response = self.handler(request)
            except HttpError as exc:
                response = Response(exc.status, {"error": str(exc)})
            except Exception as exc:  # a bug in a route: answer, log, keep the VM running
                import traceback

                traceback.print_exc(file=sys.stderr)
                response = Response(500, {"error": f"internal error: {exc!r}"})
            _send(conn, response)
            if response.after is not None:
                response.after()
        finally:
            conn.close()
            self._slots.release()


def _send(conn: _socket.socket, response: Response) -> None:
    try:
        conn.sendall(encode(response))
    except OSError:
        pass  # the client went away


def _drain(conn: _socket.socket, limit: int = MAX_BODY + MAX_HEAD) -> None:
    """After an error answer to a request not read to its end: stop sending and read what the
    client still sends (bounded), so closing does not reset the connection before the client
    has read the answer (RFC 9112, 9.6 "Tear-down")."""
    try:
        conn.shutdown(_socket.SHUT_WR)
        conn.settimeout(0.5)
        while limit > 0:
            chunk = conn.recv(min(65536, limit))
            if not chunk:
                return
            limit -= len(chunk)
    except OSError:
        pass
