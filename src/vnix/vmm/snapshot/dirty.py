"""Which guest pages changed since the last snapshot: the guest's writes from KVM's dirty log
(KVM_MEM_LOG_DIRTY_PAGES on every slot, KVM_GET_DIRTY_LOG reads and clears it) and the VMM's
own writes, which KVM does not see: device DMA through :class:`GuestMemory` (recorded there)
and the virtqueues' used rings, which devices write through windows taken when the queue was
set up (counted here from each queue's ``next_used`` since the last snapshot).

Page numbers here are guest-physical (address // 4096).
"""
from __future__ import annotations

from vnix.kvm import ioctls as k
from vnix.vmm.devices.virtio.constants import USED_ELEM_SIZE
from vnix.vmm.memory import PAGE_SIZE, GuestMemory

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any


def bitmap_pages(bitmap: bytes, first_page: int) -> Iterable[int]:
    """Set bits of a KVM dirty bitmap (u64 words, bit i = page i of the slot)."""
    for w in range(0, len(bitmap), 8):
        word = int.from_bytes(bitmap[w : w + 8], "little")
        while word:
            low = word & -word
            yield first_page + w * 8 + low.bit_length() - 1
            word ^= low


class DirtyTracker:
    """Started right after a snapshot is written or restored (its ``base``); :meth:`collect`
    once, for the next diff."""

    def __init__(self, vm: Any, mem: GuestMemory, functions: dict[str, Any], base_path: str, base_id: str) -> None:
        self.vm, self.mem, self.functions = vm, mem, functions
        self.base_path, self.base_id = base_path, base_id
        self.valid = False
        self._used: dict[tuple[str, int], tuple[int, int, int]] = {}

    def start(self, logging_on: bool) -> DirtyTracker:
        """Turn dirty logging on (unless the slots were registered with it) and clear the logs."""
        for slot, r in enumerate(self.mem):
            if not logging_on:
                self.vm.set_user_memory_region(slot, r.guest_addr, r.size, r.host_address, k.KVM_MEM_LOG_DIRTY_PAGES)
            self.vm.get_dirty_log(slot, r.size)
        self.mem.track_writes(True)
        self._used = self._used_positions()
        self.valid = True
        return self

    def _used_positions(self) -> dict[tuple[str, int], tuple[int, int, int]]:
        out = {}
        for name, fn in self.functions.items():
            for i, q in enumerate(fn.control.queues):
                if q.ready:
                    out[(name, i)] = (q.used_ring, q.size, q.next_used)
        return out

    def _used_ring_pages(self) -> set[int]:
        pages: set[int] = set()
        for key, (ring, size, now) in self._used_positions().items():
            before = self._used.get(key)
            if before is not None and before[:2] == (ring, size):
                count = (now - before[2]) & 0xFFFF
                if count == 0:
                    continue
                slots = range(size) if count >= size else ((before[2] + j) % size for j in range(count))
            else:  # a queue set up (or moved) since the last snapshot: its whole used ring
                slots = range(size)
            pages.add((ring + 2) // PAGE_SIZE)  # used.idx
            for s in slots:
                at = ring + 4 + USED_ELEM_SIZE * s
                pages.update((at // PAGE_SIZE, (at + USED_ELEM_SIZE - 1) // PAGE_SIZE))
        return pages

    def collect(self) -> tuple[set[int], set[int]]:
        """(pages the guest wrote, pages the VMM wrote) since :meth:`start`; tracking is spent
        (a new tracker starts after the snapshot is written)."""
        self.valid = False
        guest: set[int] = set()
        for slot, r in enumerate(self.mem):
            guest.update(bitmap_pages(self.vm.get_dirty_log(slot, r.size), r.guest_addr // PAGE_SIZE))
        vmm = self.mem.take_written() | self._used_ring_pages()
        return guest, vmm
