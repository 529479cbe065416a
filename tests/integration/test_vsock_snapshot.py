"""vsock keeps working across a snapshot (issue 4, item 3): the virtio_vsock test-kit guest
serves echo streams (``serve=1234``); a host program holds one open stream while the VM is
snapshotted through the control API and its VMM killed; a new VMM process is restored from the
file with another CID (as a clone gets). The restored device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
(virtio 1.2, 5.10.6.7): the guest must print it with the new CID read from config space and drop
its old stream; the host's old stream is gone; a new host -> guest CONNECT is echoed byte for byte,
and the guest finishes its own checks (one stream dropped by the reset, one echoed to its end)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from vnix.testkit.report import parse_output
from vnix.testkit.runner import TESTKIT_DIR
from vnix.vmm.launch import vmm_argv

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]
GUEST_ELF = TESTKIT_DIR / "build" / "virtio_vsock.elf"
PORT, CID, NEW_CID = 1234, 7, 9


def _read_until(proc: subprocess.Popen[bytes], out: bytearray, text: bytes, timeout: float) -> None:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    while text not in out:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else b""
            raise AssertionError(f"VMM exited ({proc.returncode}): {bytes(out[-800:])!r} {err[-800:]!r}")
        assert time.monotonic() < deadline, bytes(out[-800:])
        try:
            out += proc.stdout.read() or b""
        except BlockingIOError:
            pass
        time.sleep(0.02)


def _connect(uds: str, timeout: float = 20) -> socket.socket:
    """CONNECT to the guest's port; retried while the guest is not listening yet (RST)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        try:
            s.connect(uds)
            s.sendall(b"CONNECT %d\n" % PORT)
            line = s.recv(100)
        except OSError:
            line = b""
        if line.startswith(b"OK ") and line.endswith(b"\n"):
            return s
        s.close()
        assert time.monotonic() < deadline, f"no OK from the guest: {line!r}"
        time.sleep(0.1)


def _echo(s: socket.socket, data: bytes) -> bytes:
    sender = threading.Thread(target=s.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    sender.join()
    return bytes(got)


def _gone(s: socket.socket) -> bool:
    """The host end of a stream of a VMM that no longer exists: EOF or reset, never data."""
    s.settimeout(5)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_vsock_transport_reset_after_restore(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(TESTKIT_DIR), "build/virtio_vsock.elf"], check=True, capture_output=True)
    uds, snap = str(tmp_path / "vm.vsock"), str(tmp_path / "vsock.snap")
    api1, api2 = str(tmp_path / "api1.sock"), str(tmp_path / "api2.sock")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = subprocess.Popen(
            vmm_argv(["--kernel", str(GUEST_ELF), "--memory", "64M", "--debug-exit", "--rng", "off",
                      "--balloon", "off", "--vsock", f"cid={CID},uds={uds}", "--api-sock", api1,
                      "--cmdline", f"serve={PORT} conns=1"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(first)
        out1 = bytearray()
        _read_until(first, out1, b"vsock: serving port %d" % PORT, 30)
        old = _connect(uds)
        assert _echo(old, b"before the snapshot\n") == b"before the snapshot\n"
        with httpx.Client(transport=httpx.HTTPTransport(uds=api1), base_url="http://vmm", timeout=60) as api:
            r = api.put("/snapshot", json={"path": snap, "memory": "full", "resume": False})
            assert r.status_code == 200, r.text
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert _gone(old)  # the stream's host end went with the old VMM
        old.close()

        restored = subprocess.Popen(
            vmm_argv(["--restore", snap, "--vsock", f"cid={NEW_CID},uds={uds}", "--api-sock", api2]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(restored)
        out2 = bytearray()
        _read_until(restored, out2, b"vsock: transport reset, guest_cid %d" % NEW_CID, 30)
        new = _connect(uds)
        data = os.urandom(100_000)
        assert _echo(new, data) == data
        with httpx.Client(transport=httpx.HTTPTransport(uds=api2), base_url="http://vmm", timeout=30) as api:
            vsock = api.get("/stats").json()["devices"]["vsock"]
        assert vsock["transport_resets_sent"] == 1 and vsock["transport_resets_dropped"] == 0, vsock
        assert vsock["connections"] == 1, vsock  # the new stream only
        new.close()  # host EOF: SHUTDOWN to the guest, which ends its serve loop
        rest, err = restored.communicate(timeout=60)
        text = (out2 + rest).decode("utf-8", "replace")
        report = parse_output(out1.decode("utf-8", "replace") + text)
        assert not report.failures and report.checks.get("streams served"), text[-1200:]
        facts = report.facts
        assert facts["serve_streams_reset"] == "1" and facts["serve_streams_echoed"] == "1", facts
        assert facts["transport_resets"] == "1" and facts["guest_cid_now"] == str(NEW_CID), facts
        assert text.count("vsock: transport reset") == 1
        assert restored.returncode == 1, (restored.returncode, err.decode()[-400:])  # debug-exit 0: all ok
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
