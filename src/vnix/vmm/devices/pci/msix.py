"""MSI-X (PCI Local Bus 3.0, 6.8.2): the capability, the vector table and the pending bits.

Capability (12 bytes)::

    +0 id 0x11, next   +2 message control: bits 10:0 table size - 1, bit 14 function mask,
                          bit 15 MSI-X enable (the only writable bits)
    +4 table offset | BIR (bits 2:0)    +8 PBA offset | BIR

Table entry (16 bytes): message address low, high, message data, vector control (bit 0 mask;
1 after reset, 6.8.2.9). A vector that fires while masked (per vector or function mask) sets
its pending bit and is delivered when unmasked (6.8.2.6). Each vector is one GSI with an MSI
route and an irqfd (irq.py); firing is one eventfd write.
"""
from __future__ import annotations

import os
import struct
import threading

from vnix.vmm.devices.pci.irq import MsiRouter

CAP_ID = 0x11
ENTRY_SIZE = 16
CTRL_ENABLE = 1 << 15
CTRL_FUNCTION_MASK = 1 << 14
VECTOR_MASKED = 1


class Msix:
    def __init__(self, vectors: int, router: MsiRouter) -> None:
        self.count = vectors
        self.router = router
        self.table = [[0, 0, 0, VECTOR_MASKED] for _ in range(vectors)]
        self.pending = [False] * vectors
        self.enabled = False
        self.function_masked = False
        self.gsis: list[int] = []
        self.fds: list[int] = []
        for _ in range(vectors):
            gsi, fd = router.allocate()
            self.gsis.append(gsi)
            self.fds.append(fd)
        self.lock = threading.Lock()
        self.fired = 0

    def capability_body(self, table_offset: int, pba_offset: int, bar: int = 0) -> tuple[bytes, bytes]:
        """(body after id/next, its write mask) for ConfigSpace.add_capability."""
        body = struct.pack("<HII", self.count - 1, table_offset | bar, pba_offset | bar)
        mask = struct.pack("<H", CTRL_ENABLE | CTRL_FUNCTION_MASK) + bytes(8)
        return body, mask

    def control_written(self, control: int) -> None:
        with self.lock:
            self.enabled = bool(control & CTRL_ENABLE)
            self.function_masked = bool(control & CTRL_FUNCTION_MASK)
            self._deliver_pending()

    # -- the table and PBA in the BAR -------------------------------------------------------------
    def read_table(self, offset: int, size: int) -> bytes:
        with self.lock:
            raw = b"".join(struct.pack("<IIII", *e) for e in self.table)
        return raw[offset : offset + size].ljust(size, b"\0") if offset >= 0 else bytes(size)

    def write_table(self, offset: int, data: bytes) -> None:
        """Dword (or qword) writes to an entry; anything else is ignored (6.8.2: aligned only)."""
        if offset % 4 or len(data) not in (4, 8):
            return
        with self.lock:
            for i in range(0, len(data), 4):
                vec, word = divmod(offset + i, ENTRY_SIZE)
                if vec >= self.count:
                    return
                value = struct.unpack_from("<I", data, i)[0]
                self.table[vec][word // 4] = value & (VECTOR_MASKED if word == 12 else 0xFFFFFFFF)
                if word < 12 and not self.table[vec][3] & VECTOR_MASKED:
                    self._route(vec)
                if word == 12 and not value & VECTOR_MASKED:
                    self._route(vec)
            self._deliver_pending()

    def read_pba(self, offset: int, size: int) -> bytes:
        with self.lock:
            bits = sum(1 << i for i, p in enumerate(self.pending) if p)
        raw = bits.to_bytes(((self.count + 63) // 64) * 8, "little")
        return raw[offset : offset + size].ljust(size, b"\0") if offset >= 0 else bytes(size)

    def _route(self, vec: int) -> None:
        lo, hi, data, _ = self.table[vec]
        self.router.set_route(self.gsis[vec], (hi << 32) | lo, data)

    def _deliver_pending(self) -> None:
        if not self.enabled or self.function_masked:
            return
        for vec, pending in enumerate(self.pending):
            if pending and not self.table[vec][3] & VECTOR_MASKED:
                self.pending[vec] = False
                self._signal(vec)

    # -- firing ---------------------------------------------------------------------------------------
    def fire(self, vec: int) -> bool:
        """Raise vector ``vec``; False if MSI-X is off or ``vec`` does not exist."""
        with self.lock:
            if not self.enabled or not 0 <= vec < self.count:
                return False
            if self.function_masked or self.table[vec][3] & VECTOR_MASKED:
                self.pending[vec] = True
                return True
            self._signal(vec)
            return True

    def _signal(self, vec: int) -> None:
        self.fired += 1
        os.eventfd_write(self.fds[vec], 1)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
