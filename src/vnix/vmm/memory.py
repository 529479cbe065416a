"""Guest memory: the one door to guest RAM.

Guest RAM is a list of regions, each an anonymous host mapping placed at a guest-physical
address (on x86 RAM above 3 GiB is split around the 32-bit PCI hole, see
``vnix.vmm.arch.x86.layout``). Devices and boot loaders read and write guest memory only through
:class:`GuestMemory`; every access is bounds-checked and must lie wholly inside one region, so a
guest-controlled address or length can never reach host memory outside the guest's RAM.

Only this module (and the KVM slot registration, which needs ``host_address``) knows about mmap
and pointers.

Snapshots need two more things from here:

* **RAM from a snapshot file**: ``GuestMemory(layout, file=(fd, offset))`` maps each region
  ``MAP_PRIVATE`` from the file (region i at ``offset`` + the sizes of the regions before it):
  pages are read on demand and shared with every other mapping until written.
* **Pages the VMM wrote**: KVM's dirty log sees only what the guest writes. While
  :meth:`GuestMemory.track_writes` is on, every write through this door (``write``, ``fill``,
  a ``view`` asked for writing, ``madvise`` that discards) records the guest page numbers it
  touched; :meth:`GuestMemory.take_written` hands them over and starts a new set. (Windows kept
  from before tracking started, such as a virtqueue's used ring, are the caller's to account.)
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct

from vnix.vmm import GuestMemoryError
from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import TypeVar

    _T = TypeVar("_T", bound=ctypes.Structure)

PAGE_SIZE = 4096
_PRESENT_OR_SWAPPED = bytes(1 if b & 0xC0 else 0 for b in range(256))  # pagemap entry, top byte



class MemoryRegion(Record):
    """One contiguous piece of guest RAM backed by one host mapping."""

    __slots__ = ("guest_addr", "size", "mapping", "host_address", "file_backed")

    def __init__(self, guest_addr: int, size: int, mapping: mmap.mmap, host_address: int,
                 file_backed: bool = False) -> None:
        self.guest_addr = guest_addr
        self.size = size
        self.mapping = mapping
        self.host_address = host_address  # user-space address of the mapping, for KVM_SET_USER_MEMORY_REGION
        self.file_backed = file_backed  # mapped MAP_PRIVATE from a snapshot: unread pages hold file data

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    def contains(self, addr: int, length: int) -> bool:
        return self.guest_addr <= addr and addr + length <= self.end and length >= 0


def _anonymous(size: int) -> mmap.mmap:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _file_private(fd: int, size: int, offset: int) -> mmap.mmap:
    return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)


def _address_of(mapping: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


class GuestMemory:
    """Bounds-checked access to guest-physical memory."""

    def __init__(self, layout: Sequence[tuple[int, int]], *, file: tuple[int, int] | None = None) -> None:
        """``layout`` is a list of (guest_addr, size) pairs, page aligned and not overlapping.
        ``file=(fd, offset)``: RAM is mapped MAP_PRIVATE from that file, regions end to end."""
        regions: list[MemoryRegion] = []
        last_end = -1
        ram_offset = 0
        for guest_addr, size in sorted(layout):
            if size <= 0 or guest_addr % PAGE_SIZE or size % PAGE_SIZE:
                raise GuestMemoryError(f"bad memory region {guest_addr:#x}+{size:#x}")
            if guest_addr < last_end:
                raise GuestMemoryError(f"memory region {guest_addr:#x} overlaps the one before")
            if file is None:
                mapping = _anonymous(size)
            else:
                try:
                    mapping = _file_private(file[0], size, file[1] + ram_offset)
                except (OSError, ValueError) as exc:
                    raise GuestMemoryError(f"cannot map guest RAM from the snapshot file: {exc}") from None
            regions.append(MemoryRegion(guest_addr, size, mapping, _address_of(mapping), file is not None))
            last_end = guest_addr + size
            ram_offset += size
        if not regions:
            raise GuestMemoryError("guest memory needs at least one region")
        self._regions = regions
        self._written: set[int] | None = None  # guest page numbers written by the VMM (tracking on)

    # -- layout -----------------------------------------------------------------------------
    @property
    def regions(self) -> list[MemoryRegion]:
        return list(self._regions)

    @property
    def size(self) -> int:
        """Total bytes of RAM."""
        return sum(r.size for r in self._regions)

    def __iter__(self) -> Iterator[MemoryRegion]:
        return iter(self._regions)

    def _find(self, addr: int, length: int) -> tuple[MemoryRegion, int]:
        if length < 0 or addr < 0:
            raise GuestMemoryError(f"bad guest access {addr:#x}+{length:#x}")
        for region in self._regions:
            if region.contains(addr, length):
                return region, addr - region.guest_addr
        raise GuestMemoryError(f"guest access {addr:#x}+{length:#x} is outside guest RAM")

    def is_valid(self, addr: int, length: int) -> bool:
        """True if [addr, addr+length) lies wholly inside one RAM region."""
        try:
            self._find(addr, length)
        except GuestMemoryError:
            return False
        return True

    # -- raw bytes --------------------------------------------------------------------------
    def read(self, addr: int, length: int) -> bytes:
        region, off = self._find(addr, length)
        return region.mapping[off : off + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        region, off = self._find(addr, length)
        region.mapping[off : off + length] = bytes(data) if isinstance(data, memoryview) else data
        if self._written is not None:
            self._mark(addr, length)

    def view(self, addr: int, length: int, write: bool = True) -> memoryview:
        """A zero-copy window onto guest memory (checked once, here). ``write=False`` promises
        the caller only reads it (the pages are then not counted as written by the VMM)."""
        region, off = self._find(addr, length)
        if write and self._written is not None:
            self._mark(addr, length)
        return memoryview(region.mapping)[off : off + length]

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        region, off = self._find(addr, length)
        region.mapping[off : off + length] = bytes([byte]) * length
        if self._written is not None:
            self._mark(addr, length)

    # -- what the VMM wrote (for diff snapshots) ------------------------------------------------
    def _mark(self, addr: int, length: int) -> None:
        if length > 0 and self._written is not None:
            self._written.update(range(addr // PAGE_SIZE, (addr + length - 1) // PAGE_SIZE + 1))

    def mark_written(self, addr: int, length: int) -> None:
        """Count [addr, addr+length) as written by the VMM (a window kept from before tracking)."""
        self._mark(addr, length)

    def track_writes(self, on: bool) -> None:
        """Start (a new, empty set) or stop recording the pages the VMM writes."""
        self._written = set() if on else None

    @property
    def tracking_writes(self) -> bool:
        return self._written is not None

    def take_written(self) -> set[int]:
        """The guest page numbers (address // 4096) written since the last call; a new set starts."""
        pages, self._written = self._written or set(), (set() if self._written is not None else None)
        return pages

    def populated(self) -> bytearray:
        """One byte a page of RAM (regions end to end): 1 if the page may hold data. An
        anonymous page that was never faulted in (not present, not swapped: /proc/self/pagemap
        bits 63 and 62) is zero; a file-backed region's pages all count (unread ones are the
        file's)."""
        out = bytearray()
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            for r in self._regions:
                n = r.size // PAGE_SIZE
                if r.file_backed:
                    out += b"\x01" * n
                    continue
                raw = os.pread(f.fileno(), 8 * n, r.host_address // PAGE_SIZE * 8)
                if len(raw) != 8 * n:
                    raise GuestMemoryError("short read of /proc/self/pagemap")
                # bits 63 (present) and 62 (swapped) live in the top byte of each little-endian entry
                out += raw[7::8].translate(_PRESENT_OR_SWAPPED)
        return out

    # -- integers ---------------------------------------------------------------------------
    def read_u8(self, addr: int) -> int:
        return self.read(addr, 1)[0]

    def read_u16(self, addr: int) -> int:
        return struct.unpack("<H", self.read(addr, 2))[0]

    def read_u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def read_u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def write_u8(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<B", value & 0xFF))

    def write_u16(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<H", value & 0xFFFF))

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    # -- ctypes objects ---------------------------------------------------------------------
    def read_obj(self, addr: int, cls: type[_T]) -> _T:
        return cls.from_buffer_copy(self.read(addr, ctypes.sizeof(cls)))

    def write_obj(self, addr: int, obj: ctypes.Structure | ctypes.Array) -> None:  # type: ignore[type-arg]
        self.write(addr, bytes(obj))

    # -- host memory management -------------------------------------------------------------
    def madvise(self, addr: int, length: int, advice: int) -> None:
        """Apply ``madvise`` to a page-aligned guest range (balloon, page sharing)."""
        if addr % PAGE_SIZE or length % PAGE_SIZE:
            raise GuestMemoryError(f"madvise range {addr:#x}+{length:#x} is not page aligned")
        region, off = self._find(addr, length)
        region.mapping.madvise(advice, off, length)
        if self._written is not None and advice in (mmap.MADV_DONTNEED, getattr(mmap, "MADV_REMOVE", -1)):
            self._mark(addr, length)  # the pages now read as zero (or the file's, if file-backed)

    def close(self) -> None:
        for region in self._regions:
            try:
                region.mapping.close()
            except BufferError:
                pass  # a ctypes/memoryview export still alive; the process exit frees it
