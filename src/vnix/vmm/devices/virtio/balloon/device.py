"""virtio-balloon (virtio 1.2, 5.5): memory the guest gives back to the host.

Offered features (5.5.3): STATS_VQ (1), DEFLATE_ON_OOM (2), PAGE_REPORTING (5), plus VERSION_1.
Not MUST_TELL_HOST (deflated pages need no host action: they fault back in, zero-filled) and
not FREE_PAGE_HINT (migration hints; the migration code will add it).

Queues (5.5.2): 0 inflateq, 1 deflateq, 2 statsq, 3 free_page_vq, 4 reporting_vq, where a queue
whose feature is not negotiated does not exist and the following ones move down (Linux's
``vp_find_vqs`` numbers only the queues it sets up). The device has four queues; which one
plays which role is decided from the accepted features at DRIVER_OK (:meth:`role`).

Config space (5.5.4)::

    le32 num_pages   the target: pages the host wants in the balloon (set by the host)
    le32 actual      pages the driver says are in the balloon (written by the driver)
    le32 free_page_hint_cmd_id, le32 poison_val

Inflate/deflate (5.5.6): each buffer is an array of le32 page frame numbers (4 KiB pages,
"VIRTIO_BALLOON_PFN_SHIFT 12"). Inflated pages go back to the host with MADV_DONTNEED through
GuestMemory (the VMM's RSS drops; the guest reads zeros if it ever touches them again). A PFN
outside guest RAM is skipped and counted.

Statistics (5.5.6.3): the driver puts one buffer of ``{le16 tag; le64 val}`` entries in statsq;
the device reads it and keeps it. :meth:`request_stats` gives the buffer back (used ring +
interrupt), which asks the driver for fresh numbers; it then queues the buffer again.

Free page reporting (5.5.6.7): each buffer of reporting_vq describes free guest memory, one
range a descriptor; the device discards the whole pages inside each range and returns it.

Host side: :meth:`set_target` (what the control API calls) changes ``num_pages`` and sends a
configuration change interrupt (5.5.6.1: "the device ... notif[ies] the driver of a
configuration change").
"""
from __future__ import annotations

import logging
import mmap
import struct
import time

from vnix.vmm import GuestMemoryError
from vnix.vmm.devices.virtio.balloon.persist import BalloonState
from vnix.vmm.devices.virtio.chain import gather, total
from vnix.vmm.devices.virtio.constants import F_VERSION_1, ID_BALLOON, bit
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.queue import DescriptorChain, Queue
from vnix.vmm.memory import PAGE_SIZE

log = logging.getLogger(__name__)

# 5.5.3 Feature bits
F_MUST_TELL_HOST, F_STATS_VQ, F_DEFLATE_ON_OOM, F_FREE_PAGE_HINT, F_PAGE_POISON, F_PAGE_REPORTING = range(6)
PFN_SHIFT = 12
QUEUE_SIZE = 128
MAX_PFNS = 1 << 16  # PFNs read from one inflate/deflate buffer (Linux sends 256)
STAT = struct.Struct("<HQ")  # struct virtio_balloon_stat (packed: 10 bytes)
MAX_STATS = 64
# 5.5.6.3 Memory Statistics Tags
STAT_NAMES = {0: "swap_in", 1: "swap_out", 2: "major_faults", 3: "minor_faults", 4: "free_memory",
              5: "total_memory", 6: "available_memory", 7: "disk_caches", 8: "hugetlb_allocations",
              9: "hugetlb_failures"}
INFLATE, DEFLATE, STATS, FREE_PAGE, REPORTING = "inflate", "deflate", "stats", "free_page", "reporting"


class VirtioBalloon(VirtioDevice):
    device_id = ID_BALLOON
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, target_pages: int = 0) -> None:
        super().__init__()
        self.target_pages = target_pages
        self.actual_pages = 0
        self.inflated: set[int] = set()  # PFNs in the balloon (what the host may have reclaimed)
        self.reported_bytes = 0  # free page reporting: bytes discarded, in all
        self.skipped_pfns = 0  # PFNs outside guest RAM
        self.stats: dict[str, int] = {}
        self.stats_time: float | None = None
        self._stats_head: int | None = None  # the statsq buffer the device holds

    # -- what the driver negotiates and reads -----------------------------------------------
    def device_features(self) -> int:
        return bit(F_VERSION_1) | bit(F_STATS_VQ) | bit(F_DEFLATE_ON_OOM) | bit(F_PAGE_REPORTING)

    def config_bytes(self) -> bytes:
        return struct.pack("<IIII", self.target_pages, self.actual_pages, 0, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        """5.5.4: the driver writes ``actual`` (offset 4, le32); every other field is read-only."""
        if offset == 4 and len(data) == 4:
            self.actual_pages = struct.unpack("<I", data)[0]
        else:
            super().write_config(offset, data)

    def role(self, index: int) -> str | None:
        """The queue ``index`` plays, given the accepted features (5.5.2)."""
        roles = [INFLATE, DEFLATE]
        for feature, name in ((F_STATS_VQ, STATS), (F_FREE_PAGE_HINT, FREE_PAGE), (F_PAGE_REPORTING, REPORTING)):
            if self.acked_features & bit(feature):
                roles.append(name)
        return roles[index] if index < len(roles) else None

    def queue_of(self, role: str) -> int | None:
        """The index of the queue playing ``role`` (None if its feature was not accepted)."""
        return next((i for i in range(len(self.queues)) if self.role(i) == role), None)

    # -- the host side (the control API calls these) -----------------------------------------
    def set_target(self, pages: int) -> None:
        """Ask the guest to hold ``pages`` 4 KiB pages in its balloon (0: give everything back)."""
        pages = max(0, min(int(pages), 0xFFFFFFFF))
        with self.lock:
            if pages == self.target_pages:
                return
            self.target_pages = pages
            if self.active and self.interrupt is not None:
                self.interrupt.config_changed()

    def set_target_bytes(self, nbytes: int) -> None:
        self.set_target(nbytes // PAGE_SIZE)

    def request_stats(self) -> bool:
        """Give the held statistics buffer back so the driver refreshes it; False if the driver
        has not given one (no STATS_VQ, or not yet)."""
        with self.lock:
            index = self.queue_of(STATS)
            if self._stats_head is None or index is None or not self.active or self.broken:
                return False
            head, self._stats_head = self._stats_head, None

            def give_back() -> None:
                self.complete(self.queues[index], head, 0)
                self.signal(index)

            self.guarded(give_back)
            return True

    def info(self) -> dict[str, object]:
        """What ``vnix vm balloon`` shows: target and actual sizes, reclaimed and reported bytes."""
        with self.lock:
            return {"target_bytes": self.target_pages * PAGE_SIZE, "actual_bytes": self.actual_pages * PAGE_SIZE,
                    "inflated_bytes": len(self.inflated) * PAGE_SIZE, "reported_bytes": self.reported_bytes,
                    "stats": dict(self.stats)}

    # -- the queues -------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        role = self.role(index)
        if role is None:
            return

        def handle(q: Queue, chain: DescriptorChain) -> bool:
            if role == STATS:
                self._stats(chain)  # held: not returned until the host asks for new numbers
                return False
            if role in (INFLATE, DEFLATE):
                self._pages(chain, role == INFLATE)
            elif role == REPORTING:
                self._report(chain)
            self.complete(q, chain.head, 0)
            return True

        self.drain(index, handle)

    def _pages(self, chain: DescriptorChain, inflate: bool) -> None:
        mem = self.mem
        assert mem is not None
        n = min(total(chain.readable), 4 * MAX_PFNS) // 4
        if not n:
            self.metrics.bad_chains += 1
            return
        pfns = struct.unpack(f"<{n}I", gather(mem, chain.readable, 0, 4 * n))
        if not inflate:
            self.inflated.difference_update(pfns)  # nothing to do: the pages fault back in
            self.metrics.ok += 1
            return
        run_start, run_len = -1, 0
        for pfn in sorted(set(pfns)):
            if run_len and pfn == run_start + run_len:
                run_len += 1
                continue
            if run_len:
                self._discard_pages(run_start, run_len)
            run_start, run_len = pfn, 1
        if run_len:
            self._discard_pages(run_start, run_len)
        self.metrics.ok += 1

    def _discard_pages(self, pfn: int, count: int) -> None:
        addr = pfn << PFN_SHIFT
        if self.discard(addr, count * PAGE_SIZE):
            self.inflated.update(range(pfn, pfn + count))
        else:  # a range straddling a region boundary or outside RAM: page by page
            for p in range(pfn, pfn + count):
                if self.discard(p << PFN_SHIFT, PAGE_SIZE):
                    self.inflated.add(p)
                else:
                    self.skipped_pfns += 1

    def discard(self, addr: int, length: int) -> bool:
        """Give [addr, addr+length) back to the host (page aligned); False if not inside RAM."""
        assert self.mem is not None
        try:
            self.mem.madvise(addr, length, mmap.MADV_DONTNEED)
            return True
        except GuestMemoryError:
            return False

    def _report(self, chain: DescriptorChain) -> None:
        """5.5.6.7: each descriptor is a free range; discard the whole pages inside it."""
        for d in chain.descriptors:
            start = (d.addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            end = (d.addr + d.length) & ~(PAGE_SIZE - 1)
            if end > start and self.discard(start, end - start):
                self.reported_bytes += end - start
        self.metrics.ok += 1

    def _stats(self, chain: DescriptorChain) -> None:
        mem = self.mem
        assert mem is not None
        index = self.queue_of(STATS)
        assert index is not None
        if self._stats_head is not None:  # 5.5.6.3: one buffer at a time; the older one goes back
            self.complete(self.queues[index], self._stats_head, 0)
            self.signal(index)
        n = min(total(chain.readable) // STAT.size, MAX_STATS)
        raw = gather(mem, chain.readable, 0, n * STAT.size)
        stats = {}
        for i in range(n):
            tag, value = STAT.unpack_from(raw, i * STAT.size)
            stats[STAT_NAMES.get(tag, f"tag_{tag}")] = value
        self.stats, self.stats_time = stats, time.time()
        self._stats_head = chain.head
        self.metrics.ok += 1

    def on_reset(self) -> None:
        self._stats_head = None
        self.actual_pages = 0
        self.inflated.clear()  # 5.5.6: after reset the balloon is empty (pages fault back in)

    # -- snapshots --------------------------------------------------------------------------
    def save(self) -> BalloonState:
        return BalloonState(self.target_pages, self.actual_pages, sorted(self.inflated), self._stats_head,
                            self.reported_bytes)

    def load_state(self, state: BalloonState) -> None:
        self.target_pages, self.actual_pages = state.target_pages, state.actual_pages
        self.inflated = set(state.inflated)
        self._stats_head, self.reported_bytes = state.stats_head, state.reported_bytes
