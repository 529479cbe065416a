"""virtio-pci through the buses: mechanism 1, BAR sizing and moving, the common configuration
walk a driver does, a block request kicked through the notify area, MSI-X masking."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vnix.vmm.block.raw import RawImage
from vnix.vmm.devices.bus import MmioBus, PioBus
from vnix.vmm.devices.pci.host import CONFIG_ADDRESS, PORT_COUNT, PciHost
from vnix.vmm.devices.pci.irq import MsiRouter
from vnix.vmm.devices.pci.virtio_pci import BAR_SIZE, VirtioPciDevice
from vnix.vmm.devices.virtio.blk import VirtioBlk
from vnix.vmm.devices.virtio.mock import MockDriver
from vnix.vmm.memory import GuestMemory

BAR = 0xE0000000


class Routes:
    def __init__(self) -> None:
        self.tables: list[list[object]] = []

    def __call__(self, entries: list[object]) -> None:
        self.tables.append(entries)


@pytest.fixture()
def machine(tmp_path: Path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(64 * 512))
    mem = GuestMemory([(0, 1 << 20)])
    pio, mmio, routes = PioBus(), MmioBus(), Routes()
    host = PciHost()
    pio.insert(CONFIG_ADDRESS, PORT_COUNT, host, "pci")
    fn = VirtioPciDevice(VirtioBlk(RawImage(str(disk))), mem, MsiRouter(None, routes), mmio, threaded=False)
    fn.slot = host.add(fn)
    yield pio, mmio, mem, fn, routes, disk
    fn.close()
    mem.close()


def cfg_read(pio: PioBus, slot: int, reg: int) -> int:
    pio.write(0xCF8, struct.pack("<I", 0x80000000 | slot << 11 | reg))
    return struct.unpack("<I", pio.read(0xCFC, 4))[0]


def cfg_write(pio: PioBus, slot: int, reg: int, value: int) -> None:
    pio.write(0xCF8, struct.pack("<I", 0x80000000 | slot << 11 | reg))
    pio.write(0xCFC, struct.pack("<I", value))


def test_enumeration_and_bar_sizing(machine) -> None:
    pio, mmio, _, fn, _, _ = machine
    assert cfg_read(pio, 0, 0) == 0x00081B36 and cfg_read(pio, 0, 8) >> 16 == 0x0600  # host bridge
    assert cfg_read(pio, fn.slot, 0) == 0x10421AF4
    assert cfg_read(pio, 7, 0) == 0xFFFFFFFF  # empty slot
    pio.write(0xCF8, struct.pack("<I", 0x80010000))  # bus 1 does not exist
    assert pio.read(0xCFC, 4) == b"\xff" * 4
    cfg_write(pio, fn.slot, 0x10, 0xFFFFFFFF)
    assert cfg_read(pio, fn.slot, 0x10) == (~(BAR_SIZE - 1)) & 0xFFFFFFFF
    cfg_write(pio, fn.slot, 0x10, BAR)
    assert mmio.find(BAR) is None  # memory decoding still off
    cfg_write(pio, fn.slot, 0x04, 0x6)
    assert mmio.find(BAR) is not None
    cfg_write(pio, fn.slot, 0x10, BAR + 0x100000)  # the guest moves it
    assert mmio.find(BAR) is None and mmio.find(BAR + 0x100000) is not None


def test_driver_walk_and_a_request(machine) -> None:
    pio, mmio, mem, fn, routes, disk = machine
    cfg_write(pio, fn.slot, 0x10, BAR)
    cfg_write(pio, fn.slot, 0x04, 0x6)
    w8 = lambda off, v: mmio.write(BAR + off, bytes([v]))  # noqa: E731
    w16 = lambda off, v: mmio.write(BAR + off, struct.pack("<H", v))  # noqa: E731
    w32 = lambda off, v: mmio.write(BAR + off, struct.pack("<I", v))  # noqa: E731
    r = lambda off, n: int.from_bytes(mmio.read(BAR + off, n), "little")  # noqa: E731
    w8(0x14, 1); w8(0x14, 3)  # noqa: E702
    w32(0x00, 1)
    assert r(0x04, 4) & 1  # VERSION_1 in the high word
    w32(0x08, 1); w32(0x0C, 1); w8(0x14, 0xB)  # noqa: E702
    assert r(0x14, 1) == 0xB
    w16(0x16, 0)
    assert r(0x18, 2) == 256
    drv = MockDriver(mem, 16, 0x1000, 0x40000)
    w16(0x18, 16)
    for off, addr in ((0x20, drv.desc_table), (0x28, drv.avail_ring), (0x30, drv.used_ring)):
        w32(off, addr); w32(off + 4, 0)  # noqa: E702
    w16(0x1A, 1)
    assert r(0x1A, 2) == 1
    w16(0x1A, 7)  # no such MSI-X vector: reads back NO_VECTOR (4.1.5.1.2)
    assert r(0x1A, 2) == 0xFFFF
    w16(0x1A, 1)
    w16(0x1C, 1)
    w8(0x14, 0xF)
    assert fn.device.active
    # MSI-X: program vector 1, enable through the capability, keep it masked at first
    for i, word in enumerate((0xFEE00000, 0, 0x41, 1)):  # dword writes, as a CPU does them
        mmio.write(BAR + 0x4000 + 16 + 4 * i, struct.pack("<I", word))
    cfg_write(pio, fn.slot, fn.msix_cap, cfg_read(pio, fn.slot, fn.msix_cap) | 0x8000 << 16)
    drv.add_chain([(struct.pack("<IIQ", 1, 0, 2), False), (b"\x77" * 512, False), (1, True)])
    w16(0x3000, 0)  # kick queue 0 (no ioeventfd in this test: the bus path)
    assert drv.used() and disk.read_bytes()[1024:1536] == b"\x77" * 512
    assert fn.msix.pending[1] and fn.msix.fired == 0  # masked: pending, not sent
    mmio.write(BAR + 0x4000 + 28, struct.pack("<I", 0))  # unmask -> delivered
    assert fn.msix.fired == 1 and not fn.msix.pending[1]
    assert os.eventfd_read(fn.msix.fds[1]) == 1
    assert routes.tables and routes.tables[-1][0].u.msi.data == 0x41
    assert r(0x1000, 1) & 1 and r(0x1000, 1) == 0  # ISR: queue bit, cleared by the read
    w8(0x14, 0)
    assert r(0x14, 1) == 0 and not fn.device.active and r(0x1A, 2) == 0xFFFF
