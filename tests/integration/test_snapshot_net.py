"""Network keeps working across a snapshot: the virtio_net test-kit guest, serving TCP echo on its
tap, is snapshotted (memory, virtqueues, the device's posted rx buffers), its VMM killed, and a new
VMM process restored from the file on the same tap; the host then pings the restored guest and a
TCP connection from the host gets its bytes echoed back, byte for byte, and the guest finishes its
own checks."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from vnix.testkit.runner import TESTKIT_DIR
from vnix.vmm.launch import vmm_argv

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"),
]
probe = pytest.importorskip("vnix.vmm.devices.virtio.net.probe")
TAP, MAC = "vnxsn0", "52:54:00:5a:00:01"
HOST, GUEST = "198.19.253.1", "198.19.253.2"
GUEST_ELF = TESTKIT_DIR / "build" / "virtio_net.elf"


def _read_until(proc: subprocess.Popen[bytes], text: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    out, deadline = b"", time.monotonic() + timeout
    while text not in out:
        assert time.monotonic() < deadline and proc.poll() is None, out[-600:]
        try:
            out += proc.stdout.read() or b""
        except BlockingIOError:
            pass
        time.sleep(0.02)
    return out


def test_tcp_and_ping_work_after_restore(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(TESTKIT_DIR), "build/virtio_net.elf"], check=True, capture_output=True)
    probe.make_link(TAP, "tap", f"{HOST}/24")
    sock, snap = str(tmp_path / "api.sock"), str(tmp_path / "net.snap")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = subprocess.Popen(
            vmm_argv(["--kernel", str(GUEST_ELF), "--memory", "64M", "--debug-exit", "--rng", "off",
                      "--balloon", "off", "--net", f"tap,name={TAP},mac={MAC}", "--api-sock", sock,
                      "--cmdline", f"ip={GUEST} host={HOST} tcp_echo=100000 serve_ms=90000"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(first)
        _read_until(first, b"ready: virtio_net", 30)
        assert len(probe.ping(GUEST, 1).replies) == 1  # the guest is up on its tap before the snapshot
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://vmm", timeout=60) as api:
            r = api.put("/snapshot", json={"path": snap, "memory": "full", "resume": False})
            assert r.status_code == 200, r.text
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        restored = subprocess.Popen(
            vmm_argv(["--restore", snap, "--net", f"tap,name={TAP},mac={MAC}"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(restored)
        ping = probe.ping(GUEST, 3)
        assert len(ping.replies) == 3 and ping.payload_ok  # ARP and ICMP from the restored guest
        data = os.urandom(100_000)
        echo = probe.tcp_echo(GUEST, data)
        assert echo.equal and echo.echoed == data and echo.eof_after_close
        out, err = restored.communicate(timeout=60)
        text = out.decode("utf-8", "replace")
        assert "check fatal" not in text and "FAIL" not in text, text[-800:]
        assert "tcp_echo_bytes: 100000" in text and "tcp_echo_closed_cleanly: yes" in text, text[-800:]
        assert restored.returncode == 1, (restored.returncode, err.decode()[-400:])  # debug-exit 0: all ok
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        probe.delete_link(TAP)
