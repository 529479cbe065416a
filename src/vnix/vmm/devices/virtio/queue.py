"""The split virtqueue (virtio 1.2, 2.7), device side.

Guest memory holds three areas the driver places and the device only reads or writes through
:class:`~vnix.vmm.memory.GuestMemory`::

    descriptor table  size x { le64 addr; le32 len; le16 flags; le16 next }      align 16 (2.7.5)
    available ring    le16 flags; le16 idx; le16 ring[size]; le16 used_event     align 2  (2.7.6)
    used ring         le16 flags; le16 idx; {le32 id; le32 len} ring[size];
                      le16 avail_event                                           align 4  (2.7.8)

Everything the driver wrote is checked before it is used:

* the layout (at activation): size a power of two no larger than the device's maximum (2.7:
  "Queue Size ... is always a power of 2"), each area aligned and wholly inside guest RAM;
* ``avail.idx`` may run ahead of what the device has taken by at most ``size`` entries
  (otherwise :class:`QueueError`: the ring cannot be trusted, the device goes to NEEDS_RESET);
* each head index and ``next`` index must be below the table size; a chain may not visit more
  descriptors than its table holds (a loop); every buffer must lie wholly inside guest RAM;
  device-readable descriptors must come before device-writable ones (2.7.4.2); an indirect
  descriptor (2.7.5.3) needs VIRTIO_F_INDIRECT_DESC, a length that is a non-zero multiple of 16,
  no NEXT flag, and may not appear inside an indirect table. A bad chain is a :class:`ChainError`
  carrying its head: the device fails that one request and returns the head in the used ring.
"""
from __future__ import annotations

import struct
import sys

from vnix.vmm import GuestMemoryError
from vnix.vmm.devices.virtio import ChainError, QueueError
from vnix.vmm.devices.virtio.constants import (
    DESC_SIZE,
    MAX_QUEUE_SIZE,
    USED_ELEM_SIZE,
    VIRTIO_MSI_NO_VECTOR,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import Record

_DESC = struct.Struct("<QIHH")
# Ring indices are read and written while the guest runs on another CPU, so each must be one
# aligned 16-bit load or store: struct's "<H" moves the two bytes one at a time, and a guest that
# reads a half-written used.idx miscounts its free slots. The rings are therefore read and
# written through memoryview.cast("H") / cast("I") (one access an element; x86 is little-endian).
assert sys.byteorder == "little"


class Descriptor:
    """One checked buffer of a chain: [addr, addr+length) lies inside guest RAM."""

    __slots__ = ("addr", "length", "writable")

    def __init__(self, addr: int, length: int, writable: bool) -> None:
        self.addr, self.length, self.writable = addr, length, writable

    def __repr__(self) -> str:
        return f"Descriptor({self.addr:#x}, {self.length}, {'w' if self.writable else 'r'})"


class DescriptorChain:
    """A request: the head index (returned in the used ring) and its checked buffers."""

    __slots__ = ("head", "descriptors")

    def __init__(self, head: int, descriptors: list[Descriptor]) -> None:
        self.head, self.descriptors = head, descriptors

    @property
    def readable(self) -> list[Descriptor]:
        return [d for d in self.descriptors if not d.writable]

    @property
    def writable(self) -> list[Descriptor]:
        return [d for d in self.descriptors if d.writable]

    def __repr__(self) -> str:
        return f"DescriptorChain(head={self.head}, {self.descriptors})"


class BadChain(ChainError):
    """A malformed chain; ``head`` is valid and must be returned to the driver."""

    def __init__(self, head: int, why: str) -> None:
        super().__init__(f"descriptor chain {head}: {why}")
        self.head = head


class QueueState(Record):
    """What a queue is, for snapshots: its configuration and the two positions."""

    __slots__ = ("max_size", "size", "ready", "desc_table", "avail_ring", "used_ring", "next_avail", "next_used",
                 "vector", "indirect")

    def __init__(self, max_size: int, size: int, ready: bool, desc_table: int, avail_ring: int, used_ring: int,
                 next_avail: int, next_used: int, vector: int = VIRTIO_MSI_NO_VECTOR, indirect: bool = False) -> None:
        self.max_size, self.size, self.ready = max_size, size, ready
        self.desc_table, self.avail_ring, self.used_ring = desc_table, avail_ring, used_ring
        self.next_avail, self.next_used, self.vector, self.indirect = next_avail, next_used, vector, indirect


class Queue:
    """A split virtqueue as the device sees it."""

    def __init__(self, max_size: int) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue maximum {max_size} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """4.1.4.3.1: after reset queue_size is the maximum, queue_enable 0, addresses 0."""
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.next_avail = 0
        self.next_used = 0
        self.vector = VIRTIO_MSI_NO_VECTOR
        self.indirect = False  # VIRTIO_F_INDIRECT_DESC negotiated
        self._rings: tuple[GuestMemory, memoryview, memoryview, memoryview, memoryview] | None = None

    # -- configuration checks ---------------------------------------------------------------
    def check_layout(self, mem: GuestMemory) -> None:
        """Raise QueueError unless size and the three areas are acceptable (2.7, 2.7.5-2.7.8)."""
        n = self.size
        if not 0 < n <= self.max_size or n & (n - 1):
            raise QueueError(f"queue size {n} is not a power of two up to {self.max_size}")
        areas = (
            ("descriptor table", self.desc_table, DESC_SIZE * n, 16),
            ("available ring", self.avail_ring, 6 + 2 * n, 2),
            ("used ring", self.used_ring, 6 + USED_ELEM_SIZE * n, 4),
        )
        for name, addr, length, align in areas:
            if addr % align:
                raise QueueError(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not mem.is_valid(addr, length):
                raise QueueError(f"{name} {addr:#x}+{length:#x} is outside guest RAM")
        # The three areas were checked once, here: keep windows on them so the hot path does not
        # look the region up again for every ring access (they are dropped at reset).
        # desc: bytes; avail: u16 [flags, idx, ring...]; used: u16 [flags, idx]; elems: u32 [_, id, len, ...]
        self._rings = (mem, mem.view(self.desc_table, DESC_SIZE * n), mem.view(self.avail_ring, 6 + 2 * n).cast("H"),
                       mem.view(self.used_ring, 4).cast("H"), mem.view(self.used_ring, 4 + USED_ELEM_SIZE * n).cast("I"))

    def _views(self, mem: GuestMemory) -> tuple[memoryview, memoryview, memoryview, memoryview]:
        rings = self._rings
        if rings is None or rings[0] is not mem:
            self.check_layout(mem)
            rings = self._rings
            assert rings is not None
        return rings[1], rings[2], rings[3], rings[4]

    # -- the available ring -----------------------------------------------------------------
    def avail_idx(self, mem: GuestMemory) -> int:
        return self._views(mem)[1][1]

    def pending(self, mem: GuestMemory) -> int:
        """Entries the driver has made available and the device has not taken."""
        n = (self.avail_idx(mem) - self.next_avail) & 0xFFFF
        if n > self.size:
            raise QueueError(f"available index is {n} entries ahead of the device (queue size {self.size})")
        return n

    def pop(self, mem: GuestMemory) -> DescriptorChain | None:
        """The next available chain, or None. Raises QueueError (ring broken) or BadChain
        (this request is malformed; it has been taken and must be completed with length 0)."""
        try:
            if not self.pending(mem):
                return None
            head = self._views(mem)[1][2 + self.next_avail % self.size]
        except GuestMemoryError as exc:  # the layout was checked; only a remap could get here
            raise QueueError(str(exc)) from None
        if head >= self.size:
            raise QueueError(f"available ring names descriptor {head}, queue size is {self.size}")
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return DescriptorChain(head, self._walk(mem, head))

    def undo_pop(self, count: int = 1) -> None:
        """Give the last ``count`` popped chains back (a device that cannot take them now, e.g.
        a received frame larger than the rx buffers the driver has posted so far)."""
        self.next_avail = (self.next_avail - count) & 0xFFFF

    def _walk(self, mem: GuestMemory, head: int) -> list[Descriptor]:
        table, table_size = self.desc_table, self.size
        in_indirect = False
        seen_writable = False
        visited = 0
        index = head
        out: list[Descriptor] = []
        while True:
            if index >= table_size:
                raise BadChain(head, f"next index {index} is past the table of {table_size}")
            visited += 1
            if visited > table_size:
                raise BadChain(head, f"chain visits more than {table_size} descriptors (a loop)")
            try:
                if in_indirect:
                    addr, length, flags, nxt = _DESC.unpack(mem.read(table + DESC_SIZE * index, DESC_SIZE))
                else:  # the main table: inside the window checked at activation
                    addr, length, flags, nxt = _DESC.unpack_from(self._views(mem)[0], DESC_SIZE * index)
            except GuestMemoryError:
                raise BadChain(head, "descriptor outside guest RAM") from None
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise BadChain(head, "indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if in_indirect:
                    raise BadChain(head, "indirect descriptor inside an indirect table (2.7.5.3.1)")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise BadChain(head, "indirect descriptor with NEXT set (2.7.5.3.1)")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
                    raise BadChain(head, f"indirect table length {length} is not 16..{16 * MAX_QUEUE_SIZE} in 16s")
                if addr % DESC_SIZE or not mem.is_valid(addr, length):
                    raise BadChain(head, f"indirect table {addr:#x}+{length:#x} misaligned or outside guest RAM")
                table, table_size = addr, length // DESC_SIZE
                in_indirect, index, visited = True, 0, 0
                continue
            writable = bool(flags & VIRTQ_DESC_F_WRITE)
            if seen_writable and not writable:
                raise BadChain(head, "device-readable descriptor after a device-writable one (2.7.4.2)")
            seen_writable = writable
            if length and not mem.is_valid(addr, length):
                raise BadChain(head, f"buffer {addr:#x}+{length:#x} is outside guest RAM")
            out.append(Descriptor(addr, length, writable))
            if not flags & VIRTQ_DESC_F_NEXT:
                return out
            index = nxt

    # -- the used ring ----------------------------------------------------------------------
    def add_used(self, mem: GuestMemory, head: int, length: int) -> None:
        """Return chain ``head`` with ``length`` bytes written (2.7.8), then publish used.idx."""
        _, _, used, elems = self._views(mem)
        slot = 1 + 2 * (self.next_used % self.size)
        elems[slot] = head
        elems[slot + 1] = length & 0xFFFFFFFF
        self.next_used = (self.next_used + 1) & 0xFFFF
        used[1] = self.next_used  # after the element: 2.7.8.2 ordering

    def needs_interrupt(self, mem: GuestMemory) -> bool:
        """Without VIRTIO_F_EVENT_IDX the driver suppresses interrupts with a flag (2.7.7)."""
        try:
            return not self._views(mem)[1][0] & VIRTQ_AVAIL_F_NO_INTERRUPT
        except (GuestMemoryError, QueueError):
            return True

    # -- snapshots --------------------------------------------------------------------------
    def save(self) -> QueueState:
        return QueueState(self.max_size, self.size, self.ready, self.desc_table, self.avail_ring,
                          self.used_ring, self.next_avail, self.next_used, self.vector, self.indirect)

    @classmethod
    def restore(cls, state: QueueState) -> Queue:
        q = cls(state.max_size)
        q.size, q.ready = state.size, state.ready
        q.desc_table, q.avail_ring, q.used_ring = state.desc_table, state.avail_ring, state.used_ring
        q.next_avail, q.next_used = state.next_avail & 0xFFFF, state.next_used & 0xFFFF
        q.vector, q.indirect = state.vector, state.indirect
        return q
