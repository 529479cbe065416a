"""The PCI host bridge on configuration mechanism 1 (PCI Local Bus 3.0, 3.2.2.3.2): a 32-bit

CONFIG_ADDRESS register at port 0xCF8 and a 4-byte CONFIG_DATA window at 0xCFC..0xCFF.

CONFIG_ADDRESS: bit 31 enable, bits 23:16 bus, 15:11 device, 10:8 function, 7:2 register.
Only bus 0, function 0 of each device exists; everything else reads all ones (no device), and
writes to it are dropped. Device 0 is the host bridge itself (class 0x0600), which Linux's
``pci_sanity_check`` looks for before it trusts mechanism 1.
"""
from __future__ import annotations

import struct
import threading

from vnix.vmm.devices.pci import PciSetupError
from vnix.vmm.devices.pci.config import ConfigSpace

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # the interfaces below are for the type checker; at run time plain classes

CONFIG_ADDRESS = 0xCF8
PORT_COUNT = 8  # 0xCF8..0xCFF
MAX_DEVICES = 32
REDHAT_VENDOR = 0x1B36  # QEMU's PCI IDs (docs/specs/pci-ids.txt): 1b36:0008 "PCIe host bridge"
REDHAT_HOST_BRIDGE = 0x0008


class PciFunction(Protocol):
    config: ConfigSpace

    def config_read(self, offset: int, size: int) -> bytes: ...


class HostBridgeFunction:
    def __init__(self) -> None:
        self.config = ConfigSpace(REDHAT_VENDOR, REDHAT_HOST_BRIDGE, 0x060000)

    def config_read(self, offset: int, size: int) -> bytes:
        return self.config.read(offset, size)


class PciHost:
    """Bus 0 and the two mechanism-1 registers; a port-I/O bus device at 0xCF8."""

    def __init__(self) -> None:
        self.devices: dict[int, PciFunction] = {0: HostBridgeFunction()}
        self.address = 0
        self._lock = threading.Lock()

    def add(self, function: PciFunction) -> int:
        for slot in range(1, MAX_DEVICES):
            if slot not in self.devices:
                self.devices[slot] = function
                return slot
        raise PciSetupError("no free PCI slot on bus 0")

    def _target(self) -> tuple[PciFunction | None, int]:
        a = self.address
        if not a & 0x80000000 or (a >> 16) & 0xFF or (a >> 8) & 0x7:
            return None, 0
        return self.devices.get((a >> 11) & 0x1F), a & 0xFC

    # -- the port-I/O bus device ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if offset == 0 and size == 4:
                return struct.pack("<I", self.address)
            if offset >= 4:
                fn, reg = self._target()
                if fn is None:
                    return b"\xff" * size
                return fn.config_read(reg + offset - 4, size)
            return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            if offset == 0 and len(data) == 4:
                self.address = struct.unpack("<I", data)[0] & 0x80FFFFFC
                return
            if offset >= 4:
                fn, reg = self._target()
                if fn is not None:
                    fn.config.write(reg + offset - 4, data)
