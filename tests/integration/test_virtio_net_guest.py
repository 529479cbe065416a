"""The virtio_net test-kit guest on a TAP under vnix and under QEMU (-M pc, virtio-net-pci
modern, no vhost): the guest pings the host and gets its UDP echo, the host pings the guest; over
TCP the host's connection to a closed port is refused, the host's socket gets its bytes echoed
by the guest and the guest's connection gets its bytes echoed by the host; the two reports are
equal. Two vnix VMs on one bridge ping each other and exchange TCP (one echoes, one connects)."""
from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from vnix.vmm.devices.virtio.kit import KitRun, Nic, run

pytestmark = [
    pytest.mark.kvm, pytest.mark.qemu,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun"),
]

probe = pytest.importorskip("vnix.vmm.devices.virtio.net.probe")
MAC = "52:54:00:12:34:56"
ECHO_BYTES = 300_000  # several times the guest's 64 KiB window: flow control and window updates
CLIENT_BYTES = 200_000


@dataclass
class HostSide:
    ping: "probe.PingResult"
    udp: "probe.UdpServer"
    refused: bool
    echo: "probe.TcpEcho"
    server: "probe.TcpEchoServer"


def guest_with_host(vmm: str, tap: str) -> tuple[KitRun, HostSide]:
    probe.make_link(tap, "tap", "198.19.252.1/24")
    udp = probe.UdpServer("198.19.252.1", 5555, echo=True)
    server = probe.TcpEchoServer("198.19.252.1", 7)
    data = os.urandom(ECHO_BYTES)
    result: dict[str, object] = {}

    def host() -> None:
        result["ping"] = probe.ping("198.19.252.2", 3)
        result["refused"] = probe.refused("198.19.252.2", 23)
        result["echo"] = probe.tcp_echo("198.19.252.2", data)

    talker = threading.Thread(target=host)
    try:
        talker.start()
        r = run(vmm, "virtio_net", nics=(Nic(tap, MAC),), timeout=90,
                cmdline=f"ip=198.19.252.2 host=198.19.252.1 udp=5555 pings=3 tcp_echo={ECHO_BYTES} "
                        f"tcp_client={CLIENT_BYTES} serve_ms=40000")
        talker.join(60)
        echo = result["echo"]
        assert isinstance(echo, probe.TcpEcho)
        assert echo.echoed == data  # byte for byte
        return r, HostSide(result["ping"], udp, bool(result["refused"]), echo, server)  # type: ignore[arg-type]
    finally:
        udp.close()
        server.close()
        probe.delete_link(tap)


def test_frames_both_ways_same_report_as_qemu() -> None:
    runs = {vmm: guest_with_host(vmm, "vnxn0") for vmm in ("qemu", "vnix")}
    (q, q_host), (v, v_host) = runs["qemu"], runs["vnix"]
    assert q.passed, q.output + q.stderr
    assert v.passed, v.output + v.stderr
    assert v.report.lines == q.report.lines
    for h in (q_host, v_host):
        assert len(h.ping.replies) == 3 and h.ping.payload_ok  # the host pinged the guest
        assert h.udp.peers == {"198.19.252.2"} and h.udp.datagrams >= 1  # the guest's UDP arrived
        assert h.refused  # a SYN to a closed port got a RST
        assert h.echo.equal and h.echo.eof_after_close  # echoed, then the guest closed its side
        assert h.server.peers == ["198.19.252.2"] and h.server.echoed == CLIENT_BYTES  # guest's connection
    assert v.report.facts["mac"] == MAC
    assert v.report.facts["tcp_echo_bytes"] == str(ECHO_BYTES)
    assert v.report.facts["tcp_client_bytes_back"] == str(CLIENT_BYTES)
    assert v.report.facts["tcp_client_data_ok"] == "yes"
    assert v.report.facts["tcp_bad_checksums"] == "0"


def test_tcp_survives_lost_segments() -> None:
    """``tcp_drop=10``: the guest loses every 10th TCP data segment it receives and every 10th
    it sends (first transmissions). The echo still arrives whole and in order: the guest
    retransmitted its lost segments on timeout and asked for the host's again with duplicate
    ACKs."""
    probe.make_link("vnxn1", "tap", "198.19.249.1/24")
    data = os.urandom(100_000)
    result: dict[str, probe.TcpEcho] = {}
    talker = threading.Thread(target=lambda: result.setdefault("echo", probe.tcp_echo("198.19.249.2", data, timeout=60)))
    try:
        talker.start()
        r = run("vnix", "virtio_net", nics=(Nic("vnxn1", MAC),), timeout=120,
                cmdline=f"ip=198.19.249.2 host=198.19.249.1 tcp_echo={len(data)} tcp_drop=10 serve_ms=90000")
        talker.join(90)
    finally:
        probe.delete_link("vnxn1")
    assert r.passed, r.output + r.stderr
    assert result["echo"].equal and result["echo"].eof_after_close
    assert int(r.report.extras["tcp_retransmits"]) >= 1
    assert int(r.report.extras["tcp_dup_acks"]) >= 1


def test_two_vms_on_one_bridge_reach_each_other() -> None:
    """vnix creates both taps (by name) and puts them on the bridge itself (``bridge=``). Both
    ping each other; A serves TCP echo, B connects to A and checks the echo byte for byte."""
    n = 150_000
    probe.make_link("vnxbr0", "bridge", "198.19.253.1/24")
    try:
        def vm(me: str, peer: str, tap: str, mac: str, tcp: str) -> KitRun:
            return run("vnix", "virtio_net", nics=(Nic(tap, mac, "vnxbr0"),), timeout=90,
                       cmdline=f"ip=198.19.253.{me} host=198.19.253.1 peer=198.19.253.{peer} {tcp} serve_ms=40000")

        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(vm, "2", "3", "vnxa0", "52:54:00:00:00:02", f"tcp_echo={n}")
            b = pool.submit(vm, "3", "2", "vnxb0", "52:54:00:00:00:03", f"tcp_client={n}")
            ra, rb = a.result(), b.result()
        for r in (ra, rb):
            assert r.passed, r.output + r.stderr
            assert r.report.facts["peer_ping_reply"] == "yes"
        assert ra.report.facts["tcp_echo_bytes"] == str(n)
        assert ra.report.facts["tcp_echo_closed_cleanly"] == "yes"
        assert rb.report.facts["tcp_client_bytes_back"] == str(n)
        assert rb.report.facts["tcp_client_data_ok"] == "yes"
        assert rb.report.facts["tcp_client_closed_cleanly"] == "yes"
        # the taps vnix made were not persistent: they went away with the VMs
        assert not probe.link_exists("vnxa0") and not probe.link_exists("vnxb0")
    finally:
        for name in ("vnxa0", "vnxb0", "vnxbr0"):
            probe.delete_link(name)
