"""A PCI function's configuration space (PCI Local Bus 3.0, 6.1 "Configuration Space
Organization"): the type 0 header, memory BARs and a capability list.

::

    0x00 vendor  0x02 device  0x04 command  0x06 status  0x08 revision, class (3 bytes)
    0x0e header type  0x10..0x27 BAR0..BAR5  0x2c subsystem vendor/id  0x34 capabilities
    0x3c interrupt line  0x3d interrupt pin  0x40.. capabilities

Every byte has a write mask: the guest changes only what a real device lets it change. A BAR
of size S (a power of two) has its low log2(S) address bits read-only zero, so writing all ones
and reading back gives the size (6.2.5.1) with no special case.
"""
from __future__ import annotations

import struct

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable


COMMAND = 0x04
STATUS = 0x06
BAR0 = 0x10
CAP_PTR = 0x34
INTERRUPT_LINE = 0x3C
CMD_IO, CMD_MEMORY, CMD_BUS_MASTER, CMD_INTX_DISABLE = 1, 2, 4, 1 << 10
STATUS_CAP_LIST = 1 << 4
FIRST_CAP = 0x40


class ConfigSpace:
    def __init__(self, vendor: int, device: int, class_code: int, *, revision: int = 0,
                 subsystem_vendor: int = 0, subsystem: int = 0, header_type: int = 0) -> None:
        self.data = bytearray(256)
        self.mask = bytearray(256)
        struct.pack_into("<HH", self.data, 0, vendor, device)
        struct.pack_into("<I", self.data, 0x08, (class_code << 8) | revision)
        self.data[0x0E] = header_type
        struct.pack_into("<HH", self.data, 0x2C, subsystem_vendor, subsystem)
        struct.pack_into("<H", self.mask, COMMAND, CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE)
        self.mask[INTERRUPT_LINE] = 0xFF
        self.bar_sizes: dict[int, int] = {}
        self._cap_end = FIRST_CAP
        self._last_cap: int | None = None
        self.on_write: Callable[[int, int], None] = lambda offset, size: None

    # -- building ----------------------------------------------------------------------------
    def add_bar32(self, index: int, size: int) -> None:
        """A 32-bit non-prefetchable memory BAR of ``size`` bytes (a power of two >= 4 KiB)."""
        assert size >= 4096 and not size & (size - 1)
        self.bar_sizes[index] = size
        struct.pack_into("<I", self.mask, BAR0 + 4 * index, ~(size - 1) & 0xFFFFFFF0)

    def add_capability(self, cap_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability (id, next, body); return its offset. ``writable`` masks ``body``."""
        offset = self._cap_end
        length = 2 + len(body)
        assert offset + length <= 256
        self.data[offset] = cap_id
        self.data[offset + 2 : offset + length] = body
        if writable:
            self.mask[offset + 2 : offset + 2 + len(writable)] = writable
        if self._last_cap is None:
            self.data[CAP_PTR] = offset
            struct.pack_into("<H", self.data, STATUS, STATUS_CAP_LIST)
        else:
            self.data[self._last_cap + 1] = offset
        self._last_cap = offset
        self._cap_end = (offset + length + 3) & ~3
        return offset

    # -- guest accesses ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > 256:
            return b"\xff" * size
        return bytes(self.data[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > 256:
            return
        for i, b in enumerate(data):
            m = self.mask[offset + i]
            self.data[offset + i] = (self.data[offset + i] & ~m & 0xFF) | (b & m)
        self.on_write(offset, len(data))

    # -- what the transport needs ---------------------------------------------------------------
    @property
    def command(self) -> int:
        return struct.unpack_from("<H", self.data, COMMAND)[0]

    def bar_address(self, index: int) -> int:
        return struct.unpack_from("<I", self.data, BAR0 + 4 * index)[0] & 0xFFFFFFF0

    def set_bar_address(self, index: int, addr: int) -> None:
        """What firmware would do: place a BAR (the VMM pre-assigns, a guest may move it)."""
        old = struct.unpack_from("<I", self.data, BAR0 + 4 * index)[0]
        struct.pack_into("<I", self.data, BAR0 + 4 * index, (addr & 0xFFFFFFF0) | (old & 0xF))

    def u16(self, offset: int) -> int:
        return struct.unpack_from("<H", self.data, offset)[0]

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.data, offset)[0]
