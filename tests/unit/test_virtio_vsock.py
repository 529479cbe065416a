"""virtio-vsock protocol tests, through the mock driver and real Unix sockets: both directions
of Firecracker's CONNECT/OK and ``<uds>_<port>`` scheme, data, credit, SHUTDOWN and RST.

QEMU has no vhost-vsock on these hosts, so there is no QEMU reference for this device: these
tests (and the virtio_vsock test-kit guest) are the reference, written from virtio 1.2, 5.10."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from vnix.vmm.devices.virtio.constants import F_VERSION_1, bit
from vnix.vmm.devices.virtio.control import VirtioControl
from vnix.vmm.devices.virtio.mock import ManualWatch, MockDriver, RecordingInterrupt, bring_up
from vnix.vmm.devices.virtio.vsock import VirtioVsock
from vnix.vmm.devices.virtio.vsock import packet as p
from vnix.vmm.devices.virtio.vsock.connection import BUF_ALLOC
from vnix.vmm.memory import GuestMemory

CID = 42


class Guest:
    """The guest's side of the device: post rx buffers, send packets, read what arrives."""

    def __init__(self, dev: VirtioVsock, drivers: list[MockDriver], watch: ManualWatch) -> None:
        self.dev, self.rx, self.tx, self.watch = dev, drivers[0], drivers[1], watch
        self.bufs: dict[int, int] = {}
        self.got: list[p.Packet] = []
        self.post(16)

    def post(self, n: int, size: int = 4096 + p.HDR_SIZE) -> None:
        for _ in range(n):
            head, bufs = self.rx.add_chain([(size, True)])
            self.bufs[head] = bufs[0].addr
        self.dev.notify(0)

    def send(self, op: int, src_port: int, dst_port: int, data: bytes = b"", *, flags: int = 0,
             buf_alloc: int = 65536, fwd_cnt: int = 0, src_cid: int = CID) -> None:
        pkt = p.Packet(src_cid, p.HOST_CID, src_port, dst_port, op, flags=flags, buf_alloc=buf_alloc,
                       fwd_cnt=fwd_cnt, data=data)
        self.tx.add_chain([(pkt.header(), False)] + ([(data, False)] if data else []))
        self.dev.notify(1)

    def receive(self) -> list[p.Packet]:
        out = []
        for head, length in self.rx.used():
            raw = self.dev.mem.read(self.bufs.pop(head), length)  # type: ignore[union-attr]
            pkt, n = p.Packet.parse(raw)
            pkt.data = raw[p.HDR_SIZE : p.HDR_SIZE + n]
            out.append(pkt)
            self.post(1)
        self.got += out
        return out

    def wait_for(self, op: int, timeout: float = 3.0) -> p.Packet:
        found: list[p.Packet] = []

        def seen() -> bool:
            found.extend(x for x in self.receive() if x.op == op)
            return bool(found)

        assert self.watch.run_until(seen, timeout), f"no {p.OP_NAMES[op]} in {self.got}"
        return found[0]


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    mem = GuestMemory([(0, 4 << 20)])
    dev = VirtioVsock(CID, str(tmp_path / "v.sock"))
    watch = ManualWatch()
    dev.attach_watch(watch)
    _, drivers, _ = bring_up(dev, mem, bit(F_VERSION_1), queue_size=64)
    g = Guest(dev, drivers, watch)
    yield g
    dev.close()
    mem.close()


def test_config_space_has_the_cid(guest: Guest) -> None:
    assert guest.dev.read_config(0, 8) == CID.to_bytes(8, "little")


def test_guest_connects_to_a_host_port_and_talks(guest: Guest, tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "v.sock_5000"))
    server.listen(1)
    guest.send(p.OP_REQUEST, 1025, 5000)
    resp = guest.wait_for(p.OP_RESPONSE)
    assert (resp.src_port, resp.dst_port, resp.dst_cid) == (5000, 1025, CID)
    host, _ = server.accept()
    guest.send(p.OP_RW, 1025, 5000, b"hello host")
    assert host.recv(100) == b"hello host"
    host.sendall(b"hello guest")
    rw = guest.wait_for(p.OP_RW)
    assert rw.data == b"hello guest" and rw.buf_alloc == BUF_ALLOC and rw.fwd_cnt == len(b"hello host")
    guest.send(p.OP_SHUTDOWN, 1025, 5000, flags=p.SHUTDOWN_RCV | p.SHUTDOWN_SEND)
    assert guest.wait_for(p.OP_RST).dst_port == 1025
    host.settimeout(2)
    assert host.recv(100) == b""  # the host program sees the stream end
    assert not guest.dev.conns


def test_nobody_listening_on_the_host_port_gives_rst(guest: Guest) -> None:
    guest.send(p.OP_REQUEST, 1026, 6000)
    assert guest.wait_for(p.OP_RST).dst_port == 1026


def test_host_connects_to_a_guest_port(guest: Guest, tmp_path: Path) -> None:
    host = socket.socket(socket.AF_UNIX)
    host.connect(str(tmp_path / "v.sock"))
    host.sendall(b"CONNECT 1234\n")
    req = guest.wait_for(p.OP_REQUEST)
    assert req.dst_port == 1234 and req.src_cid == p.HOST_CID
    guest.send(p.OP_RESPONSE, 1234, req.src_port)
    host.settimeout(3)
    assert host.recv(100) == b"OK %d\n" % req.src_port
    host.sendall(b"ping")
    assert guest.wait_for(p.OP_RW).data == b"ping"
    guest.send(p.OP_RW, 1234, req.src_port, b"pong")
    assert host.recv(100) == b"pong"
    host.close()  # host EOF -> SHUTDOWN to the guest, whose RST ends the stream
    shut = guest.wait_for(p.OP_SHUTDOWN)
    assert shut.flags == p.SHUTDOWN_RCV | p.SHUTDOWN_SEND
    guest.send(p.OP_RST, 1234, req.src_port)
    assert not guest.dev.conns


def test_guest_refusing_closes_the_host_socket(guest: Guest, tmp_path: Path) -> None:
    host = socket.socket(socket.AF_UNIX)
    host.connect(str(tmp_path / "v.sock"))
    host.sendall(b"CONNECT 99\n")
    req = guest.wait_for(p.OP_REQUEST)
    guest.send(p.OP_RST, 99, req.src_port)
    host.settimeout(2)
    assert host.recv(100) == b""


def test_bad_handshake_is_dropped(guest: Guest, tmp_path: Path) -> None:
    host = socket.socket(socket.AF_UNIX)
    host.connect(str(tmp_path / "v.sock"))
    host.sendall(b"HELLO there\n")
    host.settimeout(2)
    for _ in range(10):  # accept, then read the bad line
        guest.watch.poll(0.05)
    assert not guest.dev.handshakes
    assert host.recv(100) == b"" and not guest.dev.conns


def test_host_data_waits_for_the_guests_credit(guest: Guest, tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "v.sock_7000"))
    server.listen(1)
    guest.send(p.OP_REQUEST, 1027, 7000, buf_alloc=4096)
    guest.wait_for(p.OP_RESPONSE)
    host, _ = server.accept()
    host.sendall(b"x" * 20000)
    guest.watch.run_until(lambda: sum(len(x.data) for x in guest.receive() if x.op == p.OP_RW) > 0)
    for _ in range(5):
        guest.watch.poll(0.05)
        guest.receive()
    assert sum(len(x.data) for x in guest.got if x.op == p.OP_RW) == 4096  # exactly the credit
    guest.send(p.OP_CREDIT_UPDATE, 1027, 7000, buf_alloc=4096, fwd_cnt=4096)
    guest.watch.run_until(lambda: (guest.receive(), sum(len(x.data) for x in guest.got if x.op == p.OP_RW))[1] >= 8192)
    assert sum(len(x.data) for x in guest.got if x.op == p.OP_RW) == 8192


def test_guest_beyond_our_credit_is_reset(guest: Guest, tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "v.sock_7100"))
    server.listen(1)
    guest.send(p.OP_REQUEST, 1028, 7100)
    guest.wait_for(p.OP_RESPONSE)
    host, _ = server.accept()  # never reads: its socket buffer fills, then ours
    sent = 0
    while 1028 in [k[1] for k in guest.dev.conns] and sent < 4 * BUF_ALLOC + (8 << 20):
        guest.send(p.OP_RW, 1028, 7100, b"y" * 32768)
        sent += 32768
        guest.tx.used()
    assert guest.wait_for(p.OP_RST).dst_port == 1028


def test_hostile_headers(guest: Guest) -> None:
    guest.send(p.OP_RW, 1029, 5, b"data")  # no such stream
    assert guest.wait_for(p.OP_RST).dst_port == 1029
    before = guest.dev.metrics.bad_chains
    guest.send(p.OP_REQUEST, 1030, 5, src_cid=7)  # another guest's CID
    hdr = p.Packet(CID, p.HOST_CID, 1, 2, p.OP_RW, data=b"z" * 100).header()
    guest.tx.add_chain([(hdr + b"z" * 10, False)])  # len says 100, the chain has 10
    guest.dev.notify(1)
    assert guest.dev.metrics.bad_chains == before + 2
    assert not guest.dev.broken


def test_a_connect_the_guest_never_answers_ends_with_an_error(tmp_path: Path) -> None:
    """The host program gets ``ERR ...`` and EOF after the bound, not a hang; the guest's
    pending REQUEST is reset, so its late RESPONSE finds no stream."""
    mem = GuestMemory([(0, 4 << 20)])
    dev = VirtioVsock(CID, str(tmp_path / "t.sock"), connect_timeout=0.3)
    watch = ManualWatch()
    dev.attach_watch(watch)
    _, drivers, _ = bring_up(dev, mem, bit(F_VERSION_1), queue_size=64)
    g = Guest(dev, drivers, watch)
    try:
        host = socket.socket(socket.AF_UNIX)
        host.connect(str(tmp_path / "t.sock"))
        host.sendall(b"CONNECT 7777\n")
        req = g.wait_for(p.OP_REQUEST)  # the guest sees it and stays silent
        host.settimeout(3)
        start = time.monotonic()
        reply = b""
        while chunk := host.recv(200):
            reply += chunk
        waited = time.monotonic() - start
        assert reply.startswith(b"ERR timeout") and b"7777" in reply and reply.endswith(b"\n")
        assert waited < 2.0
        rst = g.wait_for(p.OP_RST)
        assert (rst.src_port, rst.dst_port) == (req.src_port, 7777)
        assert not dev.conns and dev.connect_timeouts == 1
    finally:
        dev.close()
        mem.close()


def test_an_answered_connect_does_not_time_out(tmp_path: Path) -> None:
    mem = GuestMemory([(0, 4 << 20)])
    dev = VirtioVsock(CID, str(tmp_path / "t.sock"), connect_timeout=0.3)
    watch = ManualWatch()
    dev.attach_watch(watch)
    _, drivers, _ = bring_up(dev, mem, bit(F_VERSION_1), queue_size=64)
    g = Guest(dev, drivers, watch)
    try:
        host = socket.socket(socket.AF_UNIX)
        host.connect(str(tmp_path / "t.sock"))
        host.sendall(b"CONNECT 1234\n")
        req = g.wait_for(p.OP_REQUEST)
        g.send(p.OP_RESPONSE, 1234, req.src_port)
        host.settimeout(2)
        assert host.recv(100) == b"OK %d\n" % req.src_port
        time.sleep(0.6)  # past the bound: the open stream is untouched
        host.sendall(b"still here")
        assert g.wait_for(p.OP_RW).data == b"still here"
        assert dev.connect_timeouts == 0 and len(dev.conns) == 1
    finally:
        dev.close()
        mem.close()


def test_close_removes_the_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    dev = VirtioVsock(CID, str(path))
    assert path.exists()
    dev.close()
    assert not path.exists()


# -- the transport reset event after a snapshot restore (5.10.6.7) --------------------------------
class EventGuest:
    """A device brought up through a VirtioControl, with the event queue's driver at hand."""

    def __init__(self, tmp_path: Path, name: str = "e.sock", cid: int = CID) -> None:
        self.mem = GuestMemory([(0, 4 << 20)])
        self.dev = VirtioVsock(cid, str(tmp_path / name))
        self.dev.attach_watch(ManualWatch())
        self.ctl, drivers, self.irq = bring_up(self.dev, self.mem, bit(F_VERSION_1), queue_size=16)
        self.evq = drivers[2]

    def close(self) -> None:
        self.dev.close()
        self.mem.close()


@pytest.fixture
def ev(tmp_path: Path) -> EventGuest:
    g = EventGuest(tmp_path)
    yield g
    g.close()


def test_transport_reset_goes_into_the_first_event_buffer(ev: EventGuest) -> None:
    head, bufs = ev.evq.add_chain([(8, True)])
    second, _ = ev.evq.add_chain([(8, True)])
    ev.dev.after_restore()
    assert ev.evq.used() == [(head, 4)]  # one event, the second buffer kept for the next one
    assert ev.evq.read(bufs[0]) == b"\0\0\0\0" + b"\xaa" * 4  # le32 id 0, nothing written beyond
    assert ev.irq.queues == [2]
    assert ev.dev.counters()["transport_resets_sent"] == 1 and ev.dev.counters()["transport_resets_dropped"] == 0
    ev.dev.after_restore()  # a later restore uses the next buffer
    assert [h for h, _ in ev.evq.used()] == [second]


def test_transport_reset_split_over_two_descriptors(ev: EventGuest) -> None:
    head, bufs = ev.evq.add_chain([(2, True), (2, True)])
    ev.dev.after_restore()
    assert ev.evq.used() == [(head, 4)]
    assert ev.evq.read(bufs[0]) + ev.evq.read(bufs[1]) == b"\0\0\0\0"


def test_short_and_read_only_event_buffers_are_skipped(ev: EventGuest) -> None:
    short, sbufs = ev.evq.add_chain([(3, True)])  # < 4 writable bytes
    ro, rbufs = ev.evq.add_chain([(b"\xbb" * 8, False)])  # device-readable only
    mixed, mbufs = ev.evq.add_chain([(b"\xcc" * 4, False), (8, True)])  # a readable part
    good, gbufs = ev.evq.add_chain([(4, True)])
    ev.dev.after_restore()
    assert ev.evq.used() == [(short, 0), (ro, 0), (mixed, 0), (good, 4)]
    assert ev.evq.read(sbufs[0]) == b"\xaa" * 3 and ev.evq.read(rbufs[0]) == b"\xbb" * 8
    assert ev.evq.read(mbufs[0]) == b"\xcc" * 4 and ev.evq.read(mbufs[1]) == b"\xaa" * 8
    assert ev.evq.read(gbufs[0]) == b"\0" * 4
    assert ev.dev.metrics.bad_chains == 3 and ev.dev.transport_resets_sent == 1
    assert not ev.dev.broken


def test_only_unusable_event_buffers_drop_the_event(ev: EventGuest) -> None:
    ro, rbufs = ev.evq.add_chain([(b"\xbb" * 8, False)])
    ev.dev.after_restore()
    assert ev.evq.used() == [(ro, 0)] and ev.evq.read(rbufs[0]) == b"\xbb" * 8
    assert ev.dev.transport_resets_sent == 0 and ev.dev.transport_resets_dropped == 1
    assert not ev.dev.broken


def test_no_event_buffer_posted_is_counted_not_fatal(ev: EventGuest) -> None:
    ev.dev.after_restore()
    assert ev.evq.used() == [] and ev.irq.queues == []
    assert ev.dev.counters()["transport_resets_dropped"] == 1 and ev.dev.transport_resets_sent == 0
    assert not ev.dev.broken and ev.dev.active


def test_a_broken_event_ring_puts_the_device_in_needs_reset(ev: EventGuest) -> None:
    ev.evq.set_avail_idx(100)  # more entries than the queue holds: the driver broke the ring
    ev.dev.after_restore()
    assert ev.dev.broken and ev.dev.metrics.queue_errors == 1
    assert ev.dev.transport_resets_dropped == 1


def test_no_event_before_the_driver_is_ready(tmp_path: Path) -> None:
    dev = VirtioVsock(CID, str(tmp_path / "n.sock"))
    try:
        dev.after_restore()  # never activated: the driver reads the CID when it sets up
        assert dev.counters()["transport_resets_sent"] == dev.counters()["transport_resets_dropped"] == 0
    finally:
        dev.close()


def test_restored_device_sends_the_reset_and_has_the_clones_cid(tmp_path: Path) -> None:
    """The device's part of a restore: control state saved from one device, loaded into a new
    one (a clone: another CID), then the restore's after_restore hook."""
    first = EventGuest(tmp_path, "a.sock")
    try:
        head, _ = first.evq.add_chain([(4, True)])
        state = first.ctl.save()
        second = VirtioVsock(CID, str(tmp_path / "b.sock"))
        try:
            irq = RecordingInterrupt()
            ctl = VirtioControl(second, first.mem, irq)
            ctl.restore(state)
            second.cid = 77  # what restore.py does for a clone's vsock override
            assert first.evq.used() == []  # nothing sent by the first device or by the load
            second.after_restore()
            assert first.evq.used() == [(head, 4)] and irq.queues == [2]
            assert second.read_config(0, 8) == (77).to_bytes(8, "little")
        finally:
            second.close()
    finally:
        first.close()


def test_host_ports_start_anywhere_after_a_restore(tmp_path: Path) -> None:
    """A restored device does not hand out the pre-snapshot device's first host ports again: a
    stale packet of a stream from before the snapshot must not match a new stream."""
    from vnix.vmm.devices.virtio.vsock.device import FIRST_HOST_PORT
    from vnix.vmm.devices.virtio.vsock.persist import VsockState

    starts = set()
    for i in range(4):
        dev = VirtioVsock(CID, str(tmp_path / f"r{i}.sock"))
        try:
            assert dev.next_port == FIRST_HOST_PORT  # a booted device starts at the bottom
            dev.load_state(VsockState(CID, str(tmp_path / f"r{i}.sock")))
            assert FIRST_HOST_PORT <= dev.next_port < 0xFFFFFFFF
            starts.add(dev.next_port)
        finally:
            dev.close()
    assert len(starts) == 4
