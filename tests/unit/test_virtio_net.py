"""virtio-net through the mock driver: frames both ways, mergeable and big rx buffers, the
header the guest writes is not trusted, no rx room pauses the tap, a real TAP carries frames."""
from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest

from vnix.vmm.devices.virtio.constants import F_INDIRECT_DESC, F_VERSION_1, bit
from vnix.vmm.devices.virtio.mock import ManualWatch, MockDriver, bring_up
from vnix.vmm.devices.virtio.net import VirtioNet
from vnix.vmm.devices.virtio.net.device import F_MAC, F_MRG_RXBUF, HDR_SIZE, RX, TX
from vnix.vmm.memory import GuestMemory

MAC = "52:54:00:aa:bb:cc"


class PairBackend:
    """A frame-preserving socket pair standing in for a tap: ``peer`` is the host's side."""

    def __init__(self) -> None:
        a, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        self.sock = a
        self.fd = a.fileno()

    def readv(self, buffers: list[bytearray]) -> int | None:
        try:
            return self.sock.recvmsg_into(buffers)[0]
        except BlockingIOError:
            return None

    def writev(self, buffers: list) -> bool:
        try:
            self.sock.sendmsg(buffers)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory([(0, 1 << 20)])
    yield m
    m.close()


def up(mem: GuestMemory, features: int) -> tuple[VirtioNet, PairBackend, list[MockDriver], ManualWatch]:
    backend = PairBackend()
    dev = VirtioNet(backend, MAC)
    watch = ManualWatch()
    dev.attach_watch(watch)
    _, drivers, _ = bring_up(dev, mem, features)
    return dev, backend, drivers, watch


def frame(n: int, seed: int = 1) -> bytes:
    return bytes((i * seed + 7) & 0xFF for i in range(n))


def test_config_space_carries_the_mac_and_link_up(mem: GuestMemory) -> None:
    dev = VirtioNet(PairBackend(), MAC)
    cfg = dev.read_config(0, 10)
    assert cfg[:6] == bytes.fromhex("525400aabbcc")
    assert struct.unpack("<H", cfg[6:8])[0] & 1  # VIRTIO_NET_S_LINK_UP
    assert dev.device_features() & bit(F_MAC)
    assert not dev.device_features() & 0b11  # no CSUM / GUEST_CSUM offered


def test_transmit_sends_the_frame_with_a_clean_header(mem: GuestMemory) -> None:
    dev, backend, drivers, _ = up(mem, bit(F_VERSION_1) | bit(F_MAC))
    hostile_hdr = bytes([1, 4]) + b"\xff" * 10  # NEEDS_CSUM + GSO the guest did not negotiate
    payload = frame(1000)
    drivers[TX].add_chain([(hostile_hdr, False), (payload[:300], False), (payload[300:], False)])
    dev.notify(TX)
    got = backend.peer.recv(70000)
    assert got == bytes(HDR_SIZE) + payload
    assert drivers[TX].used() == [(0, 0)]
    assert dev.counters.tx_frames == 1


def test_bad_tx_chains_fail_alone(mem: GuestMemory) -> None:
    dev, backend, drivers, _ = up(mem, bit(F_VERSION_1))
    drivers[TX].add_chain([(b"short", False)])  # shorter than the header
    drivers[TX].add_chain([(bytes(HDR_SIZE) + b"x" * 60, False), (16, True)])  # writable part
    drivers[TX].add_chain([(bytes(HDR_SIZE) + b"ok" * 30, False)])
    dev.notify(TX)
    assert [n for _, n in drivers[TX].used()] == [0, 0, 0]
    assert dev.metrics.bad_chains == 2 and dev.counters.tx_frames == 1
    assert backend.peer.recv(200) == bytes(HDR_SIZE) + b"ok" * 30
    assert not dev.broken


def test_receive_into_one_big_buffer(mem: GuestMemory) -> None:
    dev, backend, drivers, watch = up(mem, bit(F_VERSION_1) | bit(F_INDIRECT_DESC))
    _, bufs = drivers[RX].add_chain([(HDR_SIZE + 1514, True)])
    dev.notify(RX)
    data = frame(1514, 3)
    backend.peer.send(bytes(HDR_SIZE) + data)
    assert watch.run_until(lambda: dev.counters.rx_frames == 1)
    (head, length), = drivers[RX].used()
    assert length == HDR_SIZE + 1514
    got = drivers[RX].read(bufs[0])
    assert struct.unpack_from("<H", got, 10)[0] == 1  # num_buffers is 1 without MRG_RXBUF
    assert got[HDR_SIZE:] == data


def test_mergeable_frame_spans_several_chains(mem: GuestMemory) -> None:
    dev, backend, drivers, watch = up(mem, bit(F_VERSION_1) | bit(F_MRG_RXBUF))
    bufs = [drivers[RX].add_chain([(512, True)])[1][0] for _ in range(4)]
    dev.notify(RX)
    data = frame(1400, 5)
    backend.peer.send(bytes(HDR_SIZE) + data)
    assert watch.run_until(lambda: dev.counters.rx_frames == 1)
    used = drivers[RX].used()
    assert [n for _, n in used] == [512, 512, HDR_SIZE + 1400 - 1024]
    joined = b"".join(mem.read(b.addr, n) for b, (_, n) in zip(bufs, used))
    assert struct.unpack_from("<H", joined, 10)[0] == 3
    assert joined[HDR_SIZE:] == data


def test_no_rx_room_pauses_the_tap_until_the_driver_adds_buffers(mem: GuestMemory) -> None:
    dev, backend, drivers, watch = up(mem, bit(F_VERSION_1) | bit(F_MRG_RXBUF))
    backend.peer.send(bytes(HDR_SIZE) + frame(100))
    backend.peer.send(bytes(HDR_SIZE) + frame(200))
    watch.poll(0.5)
    assert dev.rx_paused and backend.fd in watch.paused and dev.pending is not None
    assert watch.poll(0.05) == 0  # no busy loop while there is nowhere to put frames
    drivers[RX].add_chain([(2048, True)])
    drivers[RX].add_chain([(2048, True)])
    dev.notify(RX)
    watch.run_until(lambda: dev.counters.rx_frames == 2)
    assert [n for _, n in drivers[RX].used()] == [HDR_SIZE + 100, HDR_SIZE + 200]


def test_frame_too_big_for_a_small_buffer_is_dropped_without_mergeable(mem: GuestMemory) -> None:
    dev, backend, drivers, watch = up(mem, bit(F_VERSION_1))
    drivers[RX].add_chain([(100, True)])
    drivers[RX].add_chain([(2048, True)])
    dev.notify(RX)
    backend.peer.send(bytes(HDR_SIZE) + frame(1000))
    backend.peer.send(bytes(HDR_SIZE) + frame(50))
    watch.run_until(lambda: dev.counters.rx_frames == 1)
    assert dev.counters.rx_dropped == 1
    assert [n for _, n in drivers[RX].used()] == [0, HDR_SIZE + 50]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun")
def test_real_tap_carries_an_arp_request_from_the_host(mem: GuestMemory) -> None:
    """The host sends to an address on the tap's subnet: its ARP request reaches the guest's rx ring,
    and a frame the guest transmits shows up on the tap (counted by the kernel)."""
    from vnix.vmm.devices.virtio.net.tap import Tap

    tap = Tap("vnxut0")
    try:
        subprocess.run(["ip", "addr", "add", "198.19.250.1/30", "dev", tap.name], check=True)
        dev = VirtioNet(tap, MAC)
        watch = ManualWatch()
        dev.attach_watch(watch)
        _, drivers, _ = bring_up(dev, mem, bit(F_VERSION_1) | bit(F_MRG_RXBUF))
        _, bufs = drivers[RX].add_chain([(2048, True)])
        dev.notify(RX)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"hello", ("198.19.250.2", 9))  # makes the host ARP for the guest
        assert watch.run_until(lambda: dev.counters.rx_frames >= 1, 3.0)
        got = mem.read(bufs[0].addr, 2048)[HDR_SIZE:]
        assert got[12:14] in (b"\x08\x06", b"\x86\xdd")  # ARP (or an IPv6 ND packet) from the host
        before = int(open(f"/sys/class/net/{tap.name}/statistics/rx_packets").read())
        arp = bytes.fromhex("ffffffffffff525400aabbcc0806" "0001080006040001" "525400aabbcc" "c613fa02"
                            "000000000000" "c613fa01") + bytes(18)
        drivers[TX].add_chain([(bytes(HDR_SIZE) + arp, False)])
        dev.notify(TX)
        after = int(open(f"/sys/class/net/{tap.name}/statistics/rx_packets").read())
        assert after == before + 1
    finally:
        tap.close()
