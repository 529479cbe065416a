"""Guest RAM as a snapshot numbers it: the regions of the memory layout laid end to end, page p
of region i being page ``sum(sizes before i) / 4096 + p`` of RAM."""
from __future__ import annotations

from vnix.vmm import GuestMemoryError
from vnix.vmm.memory import PAGE_SIZE, GuestMemory

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Iterator


def ram_pages_of(mem: GuestMemory, guest_pages: set[int]) -> list[int]:
    """Guest-physical page numbers -> RAM page numbers (regions end to end), sorted."""
    out: list[int] = []
    base = 0
    for r in mem:
        first, n = r.guest_addr // PAGE_SIZE, r.size // PAGE_SIZE
        out += [p - first + base for p in guest_pages if first <= p < first + n]
        base += n
    return sorted(out)


def guest_page_of(mem: GuestMemory, ram_page: int) -> int:
    base = 0
    for r in mem:
        n = r.size // PAGE_SIZE
        if ram_page < base + n:
            return r.guest_addr // PAGE_SIZE + ram_page - base
        base += n
    raise GuestMemoryError(f"RAM page {ram_page} is past the end of guest RAM")


def ram_views(mem: GuestMemory, ram_offset: int, length: int) -> Iterator[memoryview]:
    """Windows on RAM bytes [ram_offset, +length) (regions end to end), split at region ends."""
    base = 0
    for r in mem:
        if length <= 0:
            return
        if ram_offset < base + r.size:
            start = ram_offset - base
            n = min(length, r.size - start)
            yield memoryview(r.mapping)[start : start + n]
            ram_offset += n
            length -= n
        base += r.size
    if length > 0:
        raise GuestMemoryError("snapshot extent past the end of guest RAM")
