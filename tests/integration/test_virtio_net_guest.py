"""The virtio_net test-kit guest on a TAP under vnix and under QEMU (-M pc, virtio-net-pci
modern, no vhost): the guest pings the host and gets its UDP echo, the host pings the guest, the
two reports are equal; two vnix VMs on one bridge ping each other."""
from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

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


def guest_with_host(vmm: str, tap: str) -> tuple[KitRun, "probe.PingResult", "probe.UdpServer"]:
    probe.make_link(tap, "tap", "198.19.252.1/24")
    echo = probe.UdpServer("198.19.252.1", 5555, echo=True)
    result: dict[str, probe.PingResult] = {}
    pinger = threading.Thread(target=lambda: result.setdefault("r", probe.ping("198.19.252.2", 3)))
    try:
        pinger.start()
        r = run(vmm, "virtio_net", nics=(Nic(tap, MAC),), timeout=60,
                cmdline="ip=198.19.252.2 host=198.19.252.1 udp=5555 pings=3 serve_ms=20000")
        pinger.join(30)
        return r, result["r"], echo
    finally:
        echo.close()
        probe.delete_link(tap)


def test_frames_both_ways_same_report_as_qemu() -> None:
    runs = {vmm: guest_with_host(vmm, "vnxn0") for vmm in ("qemu", "vnix")}
    (q, q_ping, q_echo), (v, v_ping, v_echo) = runs["qemu"], runs["vnix"]
    assert q.passed, q.output + q.stderr
    assert v.passed, v.output + v.stderr
    assert v.report.lines == q.report.lines
    for ping, echo in ((q_ping, q_echo), (v_ping, v_echo)):
        assert len(ping.replies) == 3 and ping.payload_ok  # the host pinged the guest
        assert echo.peers == {"198.19.252.2"} and echo.datagrams >= 1  # the guest's UDP arrived
    assert v.report.facts["mac"] == MAC


def test_two_vms_on_one_bridge_reach_each_other() -> None:
    """vnix creates both taps (by name) and puts them on the bridge itself (``bridge=``)."""
    probe.make_link("vnxbr0", "bridge", "198.19.253.1/24")
    try:
        def vm(me: str, peer: str, tap: str, mac: str) -> KitRun:
            return run("vnix", "virtio_net", nics=(Nic(tap, mac, "vnxbr0"),), timeout=60,
                       cmdline=f"ip=198.19.253.{me} host=198.19.253.1 peer=198.19.253.{peer} serve_ms=20000")

        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(vm, "2", "3", "vnxa0", "52:54:00:00:00:02")
            b = pool.submit(vm, "3", "2", "vnxb0", "52:54:00:00:00:03")
            ra, rb = a.result(), b.result()
        for r in (ra, rb):
            assert r.passed, r.output + r.stderr
            assert r.report.facts["peer_ping_reply"] == "yes"
        # the taps vnix made were not persistent: they went away with the VMs
        assert not probe.link_exists("vnxa0") and not probe.link_exists("vnxb0")
    finally:
        for name in ("vnxa0", "vnxb0", "vnxbr0"):
            probe.delete_link(name)
