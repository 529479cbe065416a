"""The control API's HTTP layer (vnix.vmm.api.http) over a real Unix socket, and what the VMM
process pays for the API in imports."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.vmm.api.http import MAX_BODY, MAX_HEAD, Request, Response, UnixHttpServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[UnixHttpServer, list[Request]]]:
    seen: list[Request] = []

    def handler(req: Request) -> Response:
        seen.append(req)
        if req.path == "/boom":
            raise ValueError("a bug in a route")
        return Response(200, {"method": req.method, "path": req.path, "body": req.body.decode()})

    srv = UnixHttpServer(str(tmp_path / "api.sock"), handler)
    srv.start()
    yield srv, seen
    srv.close()


def send(srv: UnixHttpServer, data: bytes) -> tuple[int, dict[str, object], bytes]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(srv.path)
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head


def test_a_request_with_a_body_reaches_the_handler(server: tuple[UnixHttpServer, list[Request]]) -> None:
    srv, seen = server
    data = b'{"graceful":true}'
    status, body, head = send(srv, b"PUT /vm/stop?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    assert status == 200 and body == {"method": "PUT", "path": "/vm/stop", "body": data.decode()}
    assert seen[0].query == "x=1" and seen[0].headers["host"] == "a"
    assert b"Content-Type: application/json" in head and b"Connection: close" in head


@pytest.mark.parametrize("raw, status", [
    (b"hello\r\n\r\n", 400),
    (b"GET vm HTTP/1.1\r\n\r\n", 400),
    (b"GET /vm HTTP/2.0\r\n\r\n", 400),
    (b"GET /vm HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"GET /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /vm HTTP/1.1\r\n\xc3\xa9: x\r\n\r\n", 400),
    (b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"PUT /vm HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"GET /vm HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    (b"GET /vm HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n", 431),
    (b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}{}", 400),
    (b"GET /boom HTTP/1.1\r\n\r\n", 500),
])
def test_malformed_or_oversized_requests(server: tuple[UnixHttpServer, list[Request]], raw: bytes, status: int) -> None:
    srv, seen = server
    got, body, _ = send(srv, raw)
    assert got == status and isinstance(body["error"], str) and body["error"]
    assert len(seen) == (1 if status == 500 else 0)
    assert send(srv, b"GET /still HTTP/1.1\r\n\r\n")[0] == 200  # the server serves on


def test_many_clients_at_once(server: tuple[UnixHttpServer, list[Request]]) -> None:
    srv, _ = server
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(send(srv, b"GET /x HTTP/1.1\r\n\r\n")[0]))
               for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [200] * 40  # over 16 at once wait their turn, none is refused


def test_the_api_keeps_the_vmm_lean() -> None:
    """What the VMM imports for --api-sock: no http.server/email/socket wrapper, no framework."""
    code = ("import sys; import vnix.vmm.machine, vnix.vmm.api, vnix.vmm.api.http, vnix.vmm.api.routes; "
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parents[2] / 'src')!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.split()
    heavy = {"http.server", "socketserver", "email", "socket", "selectors", "pydantic", "fastapi", "httpx", "http.client"}
    assert heavy.isdisjoint(out), heavy & set(out)
