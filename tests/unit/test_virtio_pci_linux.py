"""What Linux reads when it finds our devices, checked without booting Linux.

A real Linux boot on the native VMM cannot run on these hosts (kvm_pvm emulates guest kernel
code; a stock kernel does not reach user space, see shared/notes/kvm-on-these-machines.md), so
this walks each device's configuration space through mechanism 1 (ports 0xCF8/0xCFC) the way
Linux's PCI core and ``virtio_pci_modern_probe`` (drivers/virtio/virtio_pci_modern_dev.c) do:
vendor 0x1AF4, device 0x1040 + virtio ID (modern only, 0x1040..0x107F), revision 1, the
capability list with the five virtio capabilities (common, notify, ISR, device, PCI cfg) each
inside a memory BAR, and MSI-X with one vector a queue plus configuration. And the DSDT gives
Linux a PCI root bridge (PNP0A03) so it needs no ``pci=noacpi``.
"""
from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from vnix.vmm.block.raw import RawImage
from vnix.vmm.devices.bus import MmioBus, PioBus
from vnix.vmm.devices.pci.host import CONFIG_ADDRESS, PORT_COUNT, PciHost
from vnix.vmm.devices.pci.irq import MsiRouter
from vnix.vmm.devices.pci.virtio_pci import VirtioPciDevice
from vnix.vmm.devices.virtio.balloon import VirtioBalloon
from vnix.vmm.devices.virtio.blk import VirtioBlk
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.net import VirtioNet
from vnix.vmm.devices.virtio.rng import VirtioRng
from vnix.vmm.devices.virtio.vsock import VirtioVsock
from vnix.vmm.memory import GuestMemory

# struct virtio_pci_cap / include/uapi/linux/virtio_pci.h
VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_ISR_CFG = 1, 2, 3
VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_PCI_CFG = 4, 5
COMMON_CFG_SIZE = 0x38  # sizeof(struct virtio_pci_common_cfg) that 6.1's probe maps


class _Pair:
    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fd = self.a.fileno()

    def readv(self, buffers: list) -> None:
        return None

    def writev(self, buffers: list) -> bool:
        return True

    def close(self) -> None:
        self.a.close()
        self.b.close()


def devices(tmp_path: Path) -> list[tuple[VirtioDevice, int]]:
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(1 << 20))
    return [(VirtioBlk(RawImage(str(disk))), 2), (VirtioNet(_Pair()), 1), (VirtioRng(), 4),
            (VirtioBalloon(), 5), (VirtioVsock(3, str(tmp_path / "v.sock")), 19)]


def cfg(pio: PioBus, slot: int, reg: int, size: int = 4) -> int:
    pio.write(0xCF8, struct.pack("<I", 0x80000000 | slot << 11 | (reg & 0xFC)))
    return int.from_bytes(pio.read(0xCFC + (reg & 3), size), "little")


def cfg_write(pio: PioBus, slot: int, reg: int, value: int) -> None:
    pio.write(0xCF8, struct.pack("<I", 0x80000000 | slot << 11 | reg))
    pio.write(0xCFC, struct.pack("<I", value))


def test_every_device_looks_like_a_modern_virtio_pci_function(tmp_path: Path) -> None:
    mem = GuestMemory([(0, 1 << 20)])
    pio, mmio, host = PioBus(), MmioBus(), PciHost()
    pio.insert(CONFIG_ADDRESS, PORT_COUNT, host, "pci")
    fns = []
    for dev, virtio_id in devices(tmp_path):
        fn = VirtioPciDevice(dev, mem, MsiRouter(None, lambda entries: None), mmio, threaded=False)
        fn.slot = host.add(fn)
        fns.append((fn, virtio_id))
    try:
        for fn, virtio_id in fns:
            slot = fn.slot
            vendor, device = cfg(pio, slot, 0) & 0xFFFF, cfg(pio, slot, 0) >> 16
            assert (vendor, device) == (0x1AF4, 0x1040 + virtio_id)
            assert 0x1040 <= device <= 0x107F  # modern: virtio_pci_modern_probe accepts it
            assert cfg(pio, slot, 8) & 0xFF == 1  # revision 1: no legacy interface
            assert cfg(pio, slot, 0x0E, 1) & 0x7F == 0  # header type 0
            assert cfg(pio, slot, 6, 2) & 0x10  # status: capabilities list
            # BAR0: a 32-bit memory BAR; sizing by writing all ones (PCI 3.0, 6.2.5.1)
            bar0 = cfg(pio, slot, 0x10)
            assert bar0 & 1 == 0 and (bar0 >> 1) & 3 == 0
            cfg_write(pio, slot, 0x10, 0xFFFFFFFF)
            bar_size = (~(cfg(pio, slot, 0x10) & ~0xF) & 0xFFFFFFFF) + 1
            cfg_write(pio, slot, 0x10, bar0)
            caps: dict[int, tuple[int, int, int]] = {}
            msix = None
            ptr, seen = cfg(pio, slot, 0x34, 1), 0
            while ptr and seen < 48:
                assert ptr >= 0x40 and ptr % 4 == 0
                cap_id = cfg(pio, slot, ptr, 1)
                if cap_id == 0x09:  # vendor-specific: struct virtio_pci_cap
                    cap_len, cfg_type, bar = cfg(pio, slot, ptr + 2, 1), cfg(pio, slot, ptr + 3, 1), cfg(pio, slot, ptr + 4, 1)
                    offset, length = cfg(pio, slot, ptr + 8), cfg(pio, slot, ptr + 12)
                    assert cap_len >= 16 and bar <= 5
                    caps.setdefault(cfg_type, (bar, offset, length))
                    if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
                        assert cap_len >= 20 and cfg(pio, slot, ptr + 16) > 0  # notify_off_multiplier
                elif cap_id == 0x11:
                    msix = ptr
                ptr, seen = cfg(pio, slot, ptr + 1, 1), seen + 1
            assert set(caps) == {1, 2, 3, 4, 5}, caps
            for cfg_type in (1, 2, 3, 4):
                bar, offset, length = caps[cfg_type]
                assert bar == 0 and offset + length <= bar_size
            assert caps[VIRTIO_PCI_CAP_COMMON_CFG][2] >= COMMON_CFG_SIZE
            assert msix is not None
            table_size = (cfg(pio, slot, msix + 2, 2) & 0x7FF) + 1
            assert table_size == len(fn.control.queues) + 1  # a vector a queue + configuration
            table, pba = cfg(pio, slot, msix + 4), cfg(pio, slot, msix + 8)
            assert table & 7 == 0 and pba & 7 == 0 and (table & ~7) + 16 * table_size <= bar_size
    finally:
        for fn, _ in fns:
            fn.close()
        mem.close()


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
def test_dsdt_has_a_pci_root_bridge_iasl_reads(tmp_path: Path) -> None:
    from vnix.vmm.arch.x86.acpi import dsdt

    (tmp_path / "dsdt.dat").write_bytes(dsdt())
    run = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    text = (tmp_path / "dsdt.dsl").read_text()
    bridge = text[text.index("Device (PCI0)"):]
    assert 'EisaId ("PNP0A03")' in bridge
    assert "WordBusNumber (ResourceProducer" in bridge
    assert "0x0CF8,             // Range Minimum" in bridge  # the configuration ports
    assert "0xC0000000,         // Range Minimum" in bridge and "0xFEBFFFFF,         // Range Maximum" in bridge
