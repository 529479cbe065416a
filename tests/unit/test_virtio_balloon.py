"""virtio-balloon through the mock driver: inflated pages leave the host (resident pages drop,
contents read zero), deflate, the target from the host side, the stats queue, free page
reporting, and queue roles that follow the accepted features."""
from __future__ import annotations

import ctypes
import struct

import pytest

from vnix.vmm.devices.virtio.balloon import VirtioBalloon
from vnix.vmm.devices.virtio.balloon.device import (
    DEFLATE, F_PAGE_REPORTING, F_STATS_VQ, INFLATE, REPORTING, STATS,
)
from vnix.vmm.devices.virtio.constants import F_VERSION_1, bit
from vnix.vmm.devices.virtio.mock import bring_up
from vnix.vmm.memory import GuestMemory

RAM = 16 << 20
ALL = bit(F_VERSION_1) | bit(F_STATS_VQ) | bit(F_PAGE_REPORTING)


def resident_pages(mem: GuestMemory) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    region = mem.regions[0]
    n = region.size // 4096
    vec = (ctypes.c_ubyte * n)()
    assert libc.mincore(ctypes.c_void_p(region.host_address), ctypes.c_size_t(region.size), vec) == 0
    return sum(b & 1 for b in bytes(vec))


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory([(0, RAM)])
    yield m
    m.close()


def pfns(first: int, count: int) -> bytes:
    return struct.pack(f"<{count}I", *range(first, first + count))


def test_inflate_gives_pages_back_and_deflate_forgets_them(mem: GuestMemory) -> None:
    dev = VirtioBalloon()
    ctl, drivers, irq = bring_up(dev, mem, ALL, arena=1 << 20)
    first, count = (8 << 20) // 4096, 1024  # 4 MiB at 8 MiB
    mem.fill(first * 4096, count * 4096, 0x5A)
    drivers[0].add_chain([(pfns(first, count // 2), False)])
    drivers[0].add_chain([(pfns(first + count // 2, count // 2), False)])
    before = resident_pages(mem)
    dev.notify(0)
    assert [n for _, n in drivers[0].used()] == [0, 0]
    assert before - resident_pages(mem) >= count  # the host took the pages back
    assert mem.read(first * 4096, 4096) == bytes(4096)  # what the guest sees if it looks
    assert dev.info()["inflated_bytes"] == count * 4096
    drivers[1].add_chain([(pfns(first, 10), False)])
    dev.notify(1)
    assert dev.info()["inflated_bytes"] == (count - 10) * 4096
    assert irq.queues == [0, 1]


def test_pfns_outside_ram_are_skipped(mem: GuestMemory) -> None:
    dev = VirtioBalloon()
    _, drivers, _ = bring_up(dev, mem, ALL, arena=1 << 20)
    drivers[0].add_chain([(struct.pack("<3I", 0xFFFFFFFF, RAM // 4096, 2048), False)])
    dev.notify(0)
    assert dev.skipped_pfns == 2 and dev.inflated == {2048} and not dev.broken


def test_target_from_the_host_and_actual_from_the_driver(mem: GuestMemory) -> None:
    dev = VirtioBalloon(target_pages=100)
    ctl, _, irq = bring_up(dev, mem, ALL, arena=1 << 20)
    assert struct.unpack("<I", dev.read_config(0, 4))[0] == 100
    dev.set_target_bytes(8 << 20)
    assert struct.unpack("<I", dev.read_config(0, 4))[0] == 2048
    assert irq.configs == 1  # 5.5.6.1: a configuration change notification
    dev.write_config(4, struct.pack("<I", 2048))
    dev.write_config(0, struct.pack("<I", 7))  # num_pages is the host's: ignored
    assert struct.unpack("<II", dev.read_config(0, 8)) == (2048, 2048)


def test_stats_buffer_is_held_until_the_host_asks(mem: GuestMemory) -> None:
    dev = VirtioBalloon()
    _, drivers, irq = bring_up(dev, mem, ALL, arena=1 << 20)
    stats = struct.pack("<HQHQ", 4, 1234 << 12, 5, 16 << 20)  # free_memory, total_memory
    drivers[2].add_chain([(stats, False)])
    dev.notify(2)
    assert drivers[2].used() == []  # held (5.5.6.3)
    assert dev.info()["stats"] == {"free_memory": 1234 << 12, "total_memory": 16 << 20}
    assert dev.request_stats()
    assert drivers[2].used() == [(0, 0)] and 2 in irq.queues
    assert not dev.request_stats()  # nothing held now


def test_free_page_reporting_discards_whole_pages(mem: GuestMemory) -> None:
    dev = VirtioBalloon()
    _, drivers, _ = bring_up(dev, mem, ALL, arena=1 << 20)
    assert dev.role(3) == REPORTING
    mem.fill(4 << 20, 1 << 20, 0x77)
    drivers[3].add_chain([(16, True)])  # a placeholder we then point at our range
    drivers[3].write_desc(0, (4 << 20) + 100, (1 << 20) - 100, 2, 0)
    dev.notify(3)
    assert drivers[3].used() == [(0, 0)]
    assert dev.reported_bytes == (1 << 20) - 4096  # the partial first page is kept
    assert mem.read(4 << 20, 4096) == b"\x77" * 4096
    assert mem.read((4 << 20) + 4096, 4096) == bytes(4096)


def test_queue_roles_follow_the_features() -> None:
    dev = VirtioBalloon()
    dev.acked_features = bit(F_VERSION_1) | bit(F_PAGE_REPORTING)  # no statsq: reporting moves up
    assert [dev.role(i) for i in range(4)] == [INFLATE, DEFLATE, REPORTING, None]
    dev.acked_features |= bit(F_STATS_VQ)
    assert [dev.role(i) for i in range(4)] == [INFLATE, DEFLATE, STATS, REPORTING]
