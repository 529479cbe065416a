"""Hostile-driver fuzzing: random descriptor tables, indirect tables and available rings written
into real guest memory, then the device is kicked. For every case:

* nothing escapes ``notify`` (no exception, whatever the guest wrote);
* the device wrote guest memory only inside buffers some descriptor marked device-writable and
  inside the used ring — never elsewhere (an out-of-range address stops at the GuestMemory door
  and is counted, never written);
* the disk image keeps its size (and its bytes, when read-only).

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

from vnix.vmm.devices.virtio.mock import bring_up

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


def run_case(mem: GuestMemory, device: VirtioDevice, c: dict) -> VirtioDevice:
    mem.fill(0, RAM)
    mem.write(DATA, random.Random(c["seed"]).randbytes(RAM - DATA))
    features = device.device_features() & ~(0 if c["features_indirect"] else 1 << 28)
    ctl, drivers, _irq = bring_up(device, mem, features, queue_size=QSIZE, base=RINGS, arena=INDIRECT_AREA - RINGS)
    drv = drivers[0]
    assert drv.desc_table < INDIRECT_AREA
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
        _, bufs = drv.add_chain(wellformed_request(type_, sector, nsect), indirect=indirect)
        extra += [(b.addr, b.addr + b.length) for b in bufs if b.writable]
    if c["avail_idx"] is not None:
        drv.set_avail_idx(c["avail_idx"])
    used = (drv.used_ring, drv.used_ring + 6 + USED_ELEM_SIZE * QSIZE)
    table = [struct.unpack("<QIHH", mem.read(drv.desc_table + DESC_SIZE * i, DESC_SIZE)) for i in range(QSIZE)]
    allowed = _writable_ranges(table) + _writable_ranges(c["indirect"]) + extra + [used]
    before = mem.read(0, RAM)

    device.notify(0)  # must never raise
    device.notify(0)

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
