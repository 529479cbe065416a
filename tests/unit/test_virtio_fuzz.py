"""Hostile-driver fuzzing: random descriptor tables, indirect tables and available rings written
into real guest memory, then the device is kicked. For every case:

* nothing escapes ``notify`` (no exception, whatever the guest wrote);
* the device wrote guest memory only inside buffers some descriptor marked device-writable and
  inside the used ring — never elsewhere (an out-of-range address stops at the GuestMemory door
  and is counted, never written);
* the disk image keeps its size (and its bytes, when read-only).

Every device is fuzzed: blk, rng, net (rx with frames waiting on a socket pair, and tx), balloon
(inflate, deflate, stats, reporting; the pages it discards are the only other bytes that may
change) and vsock (rx, tx, event; guest REQUESTs reach a real Unix socket), each on all of its
queues with well-formed requests in its own format mixed into the hostile ones.

``VNIX_FUZZ_EXAMPLES`` sets the number of cases per device (CI default 10,000; the benchmark
mode ``VNIX_FUZZ_EXAMPLES=100000`` runs more).
"""
from __future__ import annotations

import os
import random
import struct
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnix.vmm.block.raw import RawImage
from vnix.vmm.devices.virtio.blk import VirtioBlk
from vnix.vmm.devices.virtio.constants import (
    DESC_SIZE,
    USED_ELEM_SIZE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_WRITE,
)
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.rng import VirtioRng
from vnix.vmm.memory import GuestMemory

from vnix.vmm.devices.virtio.mock import MockDriver, bring_up

EXAMPLES = int(os.environ.get("VNIX_FUZZ_EXAMPLES", "10000"))
RAM = 0x10000
QSIZE = 8
RINGS = 0x1000  # the mock driver's rings live here
INDIRECT_AREA = 0x9000  # four indirect tables of 8 entries
DATA = RAM - 0x4000  # hostile buffers point here (or past the end of RAM)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

SPECIAL_ADDRS = (RAM - 1, RAM, RAM + 0x1000, 1 << 32, (1 << 64) - 1, 0xC0000000)
SPECIAL_LENS = (1, 16, 17, 512, 0x4000, 0xFFFFFFFF)
INDIRECT_LENS = (0, 8, 15, 16, 48, 128, 129, 4096)
HEADER_TYPES = (0, 1, 4, 8, 11, 13, 2, 0xFFFFFFFF)
DESC_BYTES = 12
WELLFORMED = 3  # up to three well-formed requests a case (fuzzed type, sector, size)
FUZZED = QSIZE * DESC_BYTES + 2 + (QSIZE + 2) + 3 + 4 * WELLFORMED + 4  # drawn by hypothesis
BLOB = FUZZED + 32 * DESC_BYTES + QSIZE * 9  # the rest expanded from a seed in the draw


class Blob:
    """Decodes one byte string into a hostile driver's writes. Hypothesis draws the bytes that
    shape the main table and the available ring (it mutates and shrinks them); the indirect
    tables and request headers are expanded from a seed among those bytes. One draw per case
    instead of hundreds keeps 10,000 cases to seconds."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def take(self, n: int) -> bytes:
        out = self.raw[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def descriptor(self, main: bool) -> tuple[int, int, int, int]:
        b = self.take(DESC_BYTES)
        nxt = b[11] % (QSIZE + 2)
        if main and b[0] >= 0xE0:  # an indirect descriptor pointing at one of four tables
            table = INDIRECT_AREA + (b[1] % 4) * 8 * DESC_SIZE
            return table, INDIRECT_LENS[b[2] % 8], VIRTQ_DESC_F_INDIRECT | (b[3] & 1), nxt
        kind = b[0] % 4
        if kind < 2:
            addr = DATA + int.from_bytes(b[2:4], "little") % (RAM - DATA)
        elif kind == 2:
            addr = SPECIAL_ADDRS[b[1] % len(SPECIAL_ADDRS)]
        else:
            addr = int.from_bytes(b[2:10], "little")
        length = int.from_bytes(b[4:6], "little") % 0x801 if b[6] % 4 else SPECIAL_LENS[b[7] % 6]
        return addr, length, b[10] % 8, nxt


def decode(raw: bytes) -> dict:
    seed = int.from_bytes(raw[FUZZED - 4 : FUZZED], "little")
    b = Blob(raw[: FUZZED - 4] + random.Random(seed).randbytes(BLOB - FUZZED))
    c: dict = {"table": [b.descriptor(True) for _ in range(QSIZE)]}
    nheads = b.u(1) % (QSIZE + 3)
    c["features_indirect"] = bool(b.u(1) & 1)
    c["heads"] = [x % (QSIZE + 2) for x in b.take(QSIZE + 2)][:nheads]
    idx = b.take(3)
    c["avail_idx"] = int.from_bytes(idx[1:], "little") if idx[0] < 32 else None
    c["wellformed"] = []
    for _ in range(WELLFORMED):
        w = b.take(4)
        if w[0] & 3:
            c["wellformed"].append((HEADER_TYPES[w[1] % 6], w[2] % 140, w[3] % 5, bool(w[0] & 4)))
    c["indirect"] = [b.descriptor(False) for _ in range(32)]
    c["headers"] = []
    for _ in range(QSIZE):
        h = b.take(9)
        sector = h[1] % 141 if h[0] & 1 else int.from_bytes(h[1:9], "little")
        c["headers"].append((HEADER_TYPES[h[0] >> 5], sector))
    c["seed"] = seed
    return c


case = st.binary(min_size=FUZZED, max_size=FUZZED).map(decode)


@pytest.fixture(scope="module")
def mem() -> GuestMemory:
    m = GuestMemory([(0, RAM)])
    yield m
    m.close()


def _writable_ranges(descs: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    return [(a, a + n) for a, n, f, _ in descs if f & VIRTQ_DESC_F_WRITE and not f & VIRTQ_DESC_F_INDIRECT]


def wellformed_request(type_: int, sector: int, nsect: int) -> list[tuple[bytes | int, bool]]:
    """A request as Linux's virtio_blk builds it (5.2.6): header, data, status."""
    head = (struct.pack("<IIQ", type_, 0, sector), False)
    if type_ == 0:
        return [head, (nsect * 512, True), (1, True)]
    if type_ == 1:
        return [head, (bytes([sector & 0xFF]) * (nsect * 512), False), (1, True)]
    if type_ in (11, 13):
        return [head, (struct.pack("<QII", sector, nsect, 0), False), (1, True)]
    if type_ == 8:
        return [head, (20, True), (1, True)]
    return [head, (1, True)]


Builder = Callable[[int, int, int], list[tuple[bytes | int, bool]]]


def run_case(mem: GuestMemory, device: VirtioDevice, c: dict, *, queue: int = 0,
             build: Builder = None,  # type: ignore[assignment]
             also_allowed: Callable[[], list[tuple[int, int]]] = lambda: [],
             prime: Callable[[list[MockDriver]], None] = lambda drivers: None) -> VirtioDevice:
    """One case on queue ``queue``; ``build`` makes the well-formed requests (default: blk's);
    ``also_allowed`` names ranges the device may legitimately change besides writable buffers
    (the balloon's discarded pages read as zeros)."""
    build = build or wellformed_request
    mem.fill(0, RAM)
    mem.write(DATA, random.Random(c["seed"]).randbytes(RAM - DATA))
    features = device.device_features() & ~(0 if c["features_indirect"] else 1 << 28)
    ctl, drivers, _irq = bring_up(device, mem, features, queue_size=QSIZE, base=RINGS, arena=INDIRECT_AREA - RINGS)
    prime(drivers)  # e.g. give the device something to send on its rx queue
    drv = drivers[queue]
    assert all(d.desc_table < INDIRECT_AREA for d in drivers)
    main: list[tuple[int, int, int, int]] = []
    for i, d in enumerate(c["table"]):
        main.append(d)
        drv.write_desc(i, *d)
    for i, d in enumerate(c["indirect"]):
        drv.write_desc(i, *d, table=INDIRECT_AREA)
    for (type_, sector), (addr, _, _, _) in zip(c["headers"], main):
        if DATA <= addr <= RAM - 16:
            mem.write(addr, struct.pack("<IIQ", type_, 0, sector))
    for h in c["heads"]:
        drv.publish(h)
    extra: list[tuple[int, int]] = []
    drv.next_desc = len(c["heads"]) % QSIZE
    for type_, sector, nsect, indirect in c["wellformed"]:
        _, bufs = drv.add_chain(build(type_, sector, nsect), indirect=indirect)
        extra += [(b.addr, b.addr + b.length) for b in bufs if b.writable]
    if c["avail_idx"] is not None:
        drv.set_avail_idx(c["avail_idx"])
    used = [(d.used_ring, d.used_ring + 6 + USED_ELEM_SIZE * QSIZE) for d in drivers]
    table = [struct.unpack("<QIHH", mem.read(drv.desc_table + DESC_SIZE * i, DESC_SIZE)) for i in range(QSIZE)]
    allowed = _writable_ranges(table) + _writable_ranges(c["indirect"]) + extra + used
    before = mem.read(0, RAM)

    device.notify(queue)  # must never raise
    device.notify(queue)
    allowed += also_allowed()

    after = mem.read(0, RAM)
    if before != after:  # blank every allowed range in both copies: the rest must be equal
        b, a = bytearray(before), bytearray(after)
        for lo, hi in allowed:
            lo, hi = max(lo, 0), min(hi, RAM)
            if lo < hi:
                b[lo:hi] = a[lo:hi] = bytes(hi - lo)
        stray = next((i for i in range(RAM) if a[i] != b[i]), None) if a != b else None
        assert stray is None, f"device wrote outside writable buffers at {stray:#x}"
    ctl.write_status(0)  # reset always works, whatever state the device is in
    assert not device.active and all(not q.ready for q in ctl.queues)
    return device


def test_fuzz_rng(mem: GuestMemory) -> None:
    stats = {"cases": 0, "bad": 0, "resets": 0}

    @FUZZ
    @given(c=case)
    def one(c: dict) -> None:
        dev = VirtioRng()
        run_case(mem, dev, c)
        stats["cases"] += 1
        stats["bad"] += dev.metrics.bad_chains
        stats["resets"] += dev.metrics.queue_errors + dev.metrics.out_of_range

    one()
    assert stats["cases"] >= EXAMPLES
    assert stats["bad"] > 0 and stats["resets"] > 0  # the fuzzer reached both error paths


@pytest.mark.parametrize("readonly", [False, True])
def test_fuzz_blk(mem: GuestMemory, tmp_path: Path, readonly: bool) -> None:
    disk = tmp_path / "disk.raw"
    content = random.Random(1).randbytes(64 * 1024)
    disk.write_bytes(content)
    image = RawImage(str(disk), readonly=readonly)
    stats = {"cases": 0, "ok_requests": 0, "bad": 0}

    examples = EXAMPLES // 2  # two variants: 10,000 blk cases in all

    @settings(FUZZ, max_examples=examples)
    @given(c=case)
    def one(c: dict) -> None:
        dev = VirtioBlk(image)
        run_case(mem, dev, c)
        stats["cases"] += 1
        stats["bad"] += dev.metrics.bad_chains
        stats["ok_requests"] += dev.metrics.ok

    one()
    image.close()
    assert stats["cases"] >= examples and stats["bad"] > 0 and stats["ok_requests"] > 0
    assert disk.stat().st_size == len(content)
    if readonly:
        assert disk.read_bytes() == content


Factory = Callable[[], VirtioDevice]


# -- the other devices: every queue, requests in each device's own format ---------------------
from vnix.vmm.devices.virtio.balloon import VirtioBalloon  # noqa: E402
from vnix.vmm.devices.virtio.net import VirtioNet  # noqa: E402
from vnix.vmm.devices.virtio.vsock import VirtioVsock  # noqa: E402
from vnix.vmm.devices.virtio.vsock import packet as vp  # noqa: E402


def net_request(kind: int, size: int, extra: int) -> list[tuple[bytes | int, bool]]:
    """tx: header + frame (sometimes split); rx: writable buffers of various sizes."""
    if kind & 1:
        return [(bytes(12), False), (bytes([size & 0xFF]) * (14 + size * 10), False)]
    return [(max(1, size * 12 + extra), True)] + ([(64, True)] if kind & 2 else [])


def balloon_request(kind: int, first: int, count: int) -> list[tuple[bytes | int, bool]]:
    """PFN arrays (inflate/deflate), stats entries, or writable free ranges."""
    if kind & 1:
        return [(struct.pack("<2HQ", 4, 0, first)[:10] * (count + 1), False)]
    if kind & 2:
        return [(64 * (count + 1), True)]
    pfns = [(RAM // 4096 - 1 - first - i) % (RAM // 4096 + 4) for i in range(count * 8 + 1)]
    return [(struct.pack(f"<{len(pfns)}I", *pfns), False)]


def vsock_request(kind: int, port: int, n: int) -> list[tuple[bytes | int, bool]]:
    """A packet from this guest (cid 3) with a fuzzed op, ports and payload; or an rx buffer."""
    if kind & 1:
        return [(vp.HDR_SIZE + 16 * n, True)]
    op = (kind >> 1) % 8
    data = bytes(n * 7)
    pkt = vp.Packet(3, vp.HOST_CID, 1024 + port % 4, port, op, buf_alloc=4096, data=data)
    return [(pkt.header(), False)] + ([(data, False)] if data else [])


class FrameSource:
    """A socket pair whose far end always has a few frames waiting (net rx has work); frames the
    guest transmits are counted and dropped (a host that swallows everything)."""

    def __init__(self) -> None:
        import socket

        a, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        self.peer.setblocking(False)
        self.sock, self.fd = a, a.fileno()
        self.sunk = 0

    def refill(self, seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(3):
            try:
                self.peer.send(bytes(12) + rnd.randbytes(rnd.choice((1, 60, 700, 1514, 3000))))
            except BlockingIOError:
                break

    def readv(self, buffers: list[bytearray]) -> int | None:
        try:
            return self.sock.recvmsg_into(buffers)[0]
        except BlockingIOError:
            return None

    def writev(self, buffers: list) -> bool:
        self.sunk += 1  # accepted and dropped
        return True

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


def test_fuzz_net(mem: GuestMemory) -> None:
    backend = FrameSource()
    stats = {"cases": 0, "bad": 0, "rx": 0, "tx": 0}

    @FUZZ
    @given(c=case)
    def one(c: dict) -> None:
        dev = VirtioNet(backend, "52:54:00:00:00:01")
        backend.refill(c["seed"])
        queue = c["seed"] % 2
        run_case(mem, dev, c, queue=queue, build=net_request)
        stats["cases"] += 1
        stats["bad"] += dev.metrics.bad_chains
        stats["rx"] += dev.counters.rx_frames
        stats["tx"] += dev.counters.tx_frames

    one()
    backend.close()
    assert stats["cases"] >= EXAMPLES and stats["bad"] > 0 and stats["rx"] > 0 and stats["tx"] > 0


def test_fuzz_balloon(mem: GuestMemory) -> None:
    stats = {"cases": 0, "bad": 0, "discarded": 0}

    @FUZZ
    @given(c=case)
    def one(c: dict) -> None:
        dev = VirtioBalloon()
        discarded: list[tuple[int, int]] = []
        real = dev.discard

        def discard(addr: int, length: int) -> bool:
            ok = real(addr, length)
            if ok:
                discarded.append((addr, addr + length))
            return ok

        dev.discard = discard  # type: ignore[method-assign]
        run_case(mem, dev, c, queue=c["seed"] % 4, build=balloon_request, also_allowed=lambda: discarded)
        stats["cases"] += 1
        stats["bad"] += dev.metrics.bad_chains
        stats["discarded"] += len(discarded)

    one()
    assert stats["cases"] >= EXAMPLES and stats["bad"] > 0 and stats["discarded"] > 0


def test_fuzz_vsock(mem: GuestMemory, tmp_path: Path) -> None:
    import socket

    listener = socket.socket(socket.AF_UNIX)  # guest REQUESTs to host port 7 find someone
    listener.bind(str(tmp_path / "v.sock_7"))
    listener.listen(1024)
    stats = {"cases": 0, "bad": 0, "ok": 0}
    dev = VirtioVsock(3, str(tmp_path / "v.sock"))

    @FUZZ
    @given(c=case)
    def one(c: dict) -> None:
        def prime(drivers: list[MockDriver]) -> None:  # a packet for no stream: an RST to deliver
            drivers[1].add_chain(vsock_request(2 * vp.OP_RW, 99, 1))
            dev.notify(1)

        queue = c["seed"] % 3
        run_case(mem, dev, c, queue=queue, build=vsock_request, prime=prime if queue == 0 else lambda d: None)
        stats["cases"] += 1
        stats["bad"] += dev.metrics.bad_chains
        stats["ok"] += dev.metrics.ok
        dev.metrics.bad_chains = dev.metrics.ok = 0
        while True:  # accepted connections were reset with the device: drop them here too
            listener.setblocking(False)
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break

    one()
    dev.close()
    listener.close()
    assert stats["cases"] >= EXAMPLES and stats["bad"] > 0 and stats["ok"] > 0
