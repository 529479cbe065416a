"""Port-I/O and MMIO buses: address ranges mapped to devices, overlaps refused.

A device sees an access as (offset inside its range, bytes). Accesses that hit no device are
answered the way QEMU answers them, so test guests get the same bytes under vnix and QEMU:

* port I/O: QEMU's ``system_io`` region is backed by ``unassigned_io_ops`` whose read returns
  ``-1ULL`` (softmmu/ioport.c): every byte reads 0xFF;
* MMIO: ``unassigned_mem_read`` returns 0 (softmmu/memory.c): every byte reads 0x00.

Unassigned writes are dropped (and counted, per address, for the statistics).
"""
from __future__ import annotations

import bisect
from collections import Counter

from vnix.vmm import VmmError
from vnix.vmm.record import FrozenRecord, _set

TYPE_CHECKING = False  # no typing import at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from typing import Protocol

    class BusDevice(Protocol):
        """What a bus calls. ``offset`` is relative to the start of the device's range."""

        def read(self, offset: int, size: int) -> bytes: ...

        def write(self, offset: int, data: bytes) -> None: ...


class BusError(VmmError):
    """A device range that cannot be placed (host-side wiring error)."""


class BusRange(FrozenRecord):
    __slots__ = ("base", "length", "device", "name")
    base: int
    length: int
    device: BusDevice
    name: str

    def __init__(self, base: int, length: int, device: BusDevice, name: str) -> None:
        _set(self, "base", base)
        _set(self, "length", length)
        _set(self, "device", device)
        _set(self, "name", name)

    @property
    def end(self) -> int:
        return self.base + self.length


class Bus:
    """Non-overlapping ranges, found by binary search."""

    def __init__(self, name: str, limit: int, unassigned_byte: int) -> None:
        self.name = name
        self.limit = limit
        self._fill = bytes([unassigned_byte])
        self._bases: list[int] = []
        self._ranges: list[BusRange] = []
        self.unassigned_reads: Counter[int] = Counter()
        self.unassigned_writes: Counter[int] = Counter()

    def insert(self, base: int, length: int, device: BusDevice, name: str) -> None:
        if length <= 0 or base < 0 or base + length > self.limit:
            raise BusError(f"{self.name}: {name} range {base:#x}+{length:#x} is outside the bus")
        for r in self._ranges:
            if base < r.end and r.base < base + length:
                raise BusError(
                    f"{self.name}: {name} at {base:#x}+{length:#x} overlaps {r.name} at {r.base:#x}+{r.length:#x}"
                )
        i = bisect.bisect(self._bases, base)
        self._bases.insert(i, base)
        self._ranges.insert(i, BusRange(base, length, device, name))

    def remove(self, base: int) -> BusRange:
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise BusError(f"{self.name}: no device at {base:#x}")
        del self._bases[i]
        return self._ranges.pop(i)

    @property
    def ranges(self) -> list[BusRange]:
        return list(self._ranges)

    def find(self, addr: int, size: int = 1) -> BusRange | None:
        """The range holding all of [addr, addr+size), or None."""
        i = bisect.bisect(self._bases, addr) - 1
        if i < 0:
            return None
        r = self._ranges[i]
        return r if addr + size <= r.end else None

    def read(self, addr: int, size: int) -> bytes:
        r = self.find(addr, size)
        if r is None:
            self.unassigned_reads[addr] += 1
            return self._fill * size
        data = r.device.read(addr - r.base, size)
        if len(data) != size:  # a device bug must not become a short read for the guest
            data = (data + self._fill * size)[:size]
        return data

    def write(self, addr: int, data: bytes) -> bool:
        """Deliver a write; False if no device took it."""
        r = self.find(addr, len(data))
        if r is None:
            self.unassigned_writes[addr] += 1
            return False
        r.device.write(addr - r.base, data)
        return True


class PioBus(Bus):
    """The 64 KiB x86 I/O port space."""

    def __init__(self) -> None:
        super().__init__("pio", 0x10000, 0xFF)


class MmioBus(Bus):
    """Guest-physical MMIO (everything that is not RAM and not handled in the kernel)."""

    def __init__(self) -> None:
        super().__init__("mmio", 1 << 64, 0x00)
