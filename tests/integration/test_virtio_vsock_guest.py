"""The virtio_vsock test-kit guest under vnix, with the host side on Unix sockets as Firecracker
does it: the guest connects to a host port (``<uds>_<port>``) and the host connects to a guest
port (``CONNECT <port>`` on ``<uds>``) and gets 1 MiB echoed back.

There is no QEMU reference for vsock here: QEMU's vsock needs /dev/vhost-vsock, which these
hosts lack. The references are the protocol tests (tests/unit/test_virtio_vsock.py, written
from virtio 1.2, 5.10) and the bytes the host checks below."""
from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from vnix.vmm.devices.virtio.kit import run

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]


def test_vsock_both_ways(tmp_path: Path) -> None:
    uds = str(tmp_path / "vm.vsock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(f"{uds}_5000")  # the guest's connection to host port 5000 lands here
    server.listen(1)
    server.settimeout(30)
    payload = random.Random(7).randbytes(1 << 20)
    host: dict[str, object] = {}

    def guest_to_host() -> None:
        conn, _ = server.accept()
        conn.settimeout(10)
        host["hello"] = conn.recv(100)
        conn.sendall(b"hello from the host\n")
        host["eof"] = conn.recv(100) == b""  # the guest's SHUTDOWN closes our side

    def host_to_guest() -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(uds) and time.monotonic() < deadline:
            time.sleep(0.02)
        while time.monotonic() < deadline and "ok" not in host:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(uds)
            s.sendall(b"CONNECT 1234\n")
            line = s.recv(100)
            if not line.startswith(b"OK "):  # the guest was not listening yet: RST, try again
                s.close()
                time.sleep(0.1)
                continue
            host["ok"] = line
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            sender.join()
            host["echo"] = bytes(got)
            s.close()

    threads = [threading.Thread(target=guest_to_host), threading.Thread(target=host_to_guest)]
    for t in threads:
        t.start()
    r = run("vnix", "virtio_vsock", cmdline="connect=5000 listen=1234", timeout=90,
            extra=("--vsock", f"cid=7,uds={uds}"))
    for t in threads:
        t.join(30)
    assert r.passed, r.output + r.stderr
    assert r.report.facts["guest_cid"] == "7"
    assert host["hello"] == b"hello from the guest\n" and host["eof"] is True
    assert host["ok"].startswith(b"OK ") and host["ok"].endswith(b"\n")  # type: ignore[union-attr]
    assert host["echo"] == payload
    assert not os.path.exists(uds)  # the VMM removed its listening socket file when it exited
