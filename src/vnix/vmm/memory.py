"""Guest memory: the one door to guest RAM.

Guest RAM is a list of regions, each an anonymous host mapping placed at a guest-physical
address (on x86 RAM above 3 GiB is split around the 32-bit PCI hole, see
``vnix.vmm.arch.x86.layout``). Devices and boot loaders read and write guest memory only through
:class:`GuestMemory`; every access is bounds-checked and must lie wholly inside one region, so a
guest-controlled address or length can never reach host memory outside the guest's RAM.

Only this module (and the KVM slot registration, which needs ``host_address``) knows about mmap
and pointers.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

from vnix.vmm import GuestMemoryError

PAGE_SIZE = 4096

_T = TypeVar("_T", bound=ctypes.Structure)


@dataclass
class MemoryRegion:
    """One contiguous piece of guest RAM backed by one host mapping."""

    guest_addr: int
    size: int
    mapping: mmap.mmap
    host_address: int  # user-space address of the mapping, for KVM_SET_USER_MEMORY_REGION

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    def contains(self, addr: int, length: int) -> bool:
        return self.guest_addr <= addr and addr + length <= self.end and length >= 0


def _anonymous(size: int) -> mmap.mmap:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _address_of(mapping: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


class GuestMemory:
    """Bounds-checked access to guest-physical memory."""

    def __init__(self, layout: Sequence[tuple[int, int]]) -> None:
        """``layout`` is a list of (guest_addr, size) pairs, page aligned and not overlapping."""
        regions: list[MemoryRegion] = []
        last_end = -1
        for guest_addr, size in sorted(layout):
            if size <= 0 or guest_addr % PAGE_SIZE or size % PAGE_SIZE:
                raise GuestMemoryError(f"bad memory region {guest_addr:#x}+{size:#x}")
            if guest_addr < last_end:
                raise GuestMemoryError(f"memory region {guest_addr:#x} overlaps the one before")
            mapping = _anonymous(size)
            regions.append(MemoryRegion(guest_addr, size, mapping, _address_of(mapping)))
            last_end = guest_addr + size
        if not regions:
            raise GuestMemoryError("guest memory needs at least one region")
        self._regions = regions

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

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy window onto guest memory (checked once, here)."""
        region, off = self._find(addr, length)
        return memoryview(region.mapping)[off : off + length]

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        region, off = self._find(addr, length)
        region.mapping[off : off + length] = bytes([byte]) * length

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

    def close(self) -> None:
        for region in self._regions:
            try:
                region.mapping.close()
            except BufferError:
                pass  # a ctypes/memoryview export still alive; the process exit frees it
