"""Put the machine's virtio devices on PCI: the host bridge at 0xCF8, one virtio-pci function per
disk (and net, rng, balloon, vsock device), BAR0s pre-assigned in the 32-bit hole as firmware
would, MSI routes committed through the machine's GSI routing table.

The machine calls :func:`add_pci_devices` once, from its single marked hook.
"""
from __future__ import annotations

import logging

from vnix.vmm.arch.x86.layout import DEVICE_MMIO_START
from vnix.vmm.block.image import open_image
from vnix.vmm.config import MachineConfig
from vnix.vmm.devices.bus import MmioBus, PioBus
from vnix.vmm.devices.pci import PciSetupError
from vnix.vmm.devices.pci.config import CMD_BUS_MASTER, CMD_MEMORY, COMMAND
from vnix.vmm.devices.pci.host import CONFIG_ADDRESS, PORT_COUNT, PciHost
from vnix.vmm.devices.pci.irq import MsiRouter
from vnix.vmm.devices.pci.virtio_pci import BAR_SIZE, VirtioPciDevice
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.memory import GuestMemory

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


log = logging.getLogger(__name__)

PCI_BAR_BASE = DEVICE_MMIO_START  # 0xC0000000: BAR0 of slot n at + n * BAR_SIZE (a guest may move it)


class PciDevices:
    """What the machine keeps: the host bridge and the virtio-pci functions, by name."""

    def __init__(self, host: PciHost, router: MsiRouter) -> None:
        self.host, self.router = host, router
        self.functions: dict[str, VirtioPciDevice] = {}

    def device(self, name: str) -> VirtioDevice | None:
        """A device by name (``balloon``, ``vsock``, ``net0``, ``blk0``...): what the control API
        of the VMM process calls (e.g. ``device("balloon").set_target(pages)``)."""
        fn = self.functions.get(name)
        return fn.device if fn is not None else None

    def close(self) -> None:
        for fn in self.functions.values():
            try:
                fn.close()
            except Exception as exc:  # noqa: BLE001 - close every device, report each failure
                log.warning("closing %s: %s", fn.name, exc)


def virtio_devices(config: MachineConfig) -> list[tuple[str, VirtioDevice]]:
    """The virtio devices a configuration asks for, in slot order."""
    from vnix.vmm.devices.virtio.blk import VirtioBlk

    out: list[tuple[str, VirtioDevice]] = []
    for i, disk in enumerate(config.disks):
        image = open_image(disk.path, disk.format, disk.readonly)
        out.append((f"blk{i}", VirtioBlk(image, serial=f"vnix-disk{i}", path=disk.path, fmt=disk.format)))
    for i, net in enumerate(config.nets):
        try:
            from vnix.vmm.devices.virtio.net import VirtioNet
        except ImportError:
            raise PciSetupError("virtio-net is not available in this build") from None
        out.append((f"net{i}", VirtioNet.from_config(net, i)))
    if config.rng:
        from vnix.vmm.devices.virtio.rng import VirtioRng

        out.append(("rng", VirtioRng()))
    if config.balloon:
        from vnix.vmm.devices.virtio.balloon import VirtioBalloon

        out.append(("balloon", VirtioBalloon(config.balloon_mib * 256)))  # 256 pages of 4 KiB a MiB
    if config.vsock is not None:
        from vnix.vmm.devices.virtio.vsock import VirtioVsock

        out.append(("vsock", VirtioVsock(config.vsock.cid, config.vsock.uds)))
    return out


def add_pci_devices(pio: PioBus, mmio: MmioBus, mem: GuestMemory, vm: Any,
                    commit_routes: Callable[[list[Any]], None], config: MachineConfig,
                    placement: dict[str, tuple[int, int]] | None = None) -> PciDevices:
    """``placement`` (a restore): each function's saved (BAR0 address, command register), put in
    place before the BAR is first mapped, so its queue-notify ioeventfds are registered once,
    where the guest has them; MSI routes are then held until the restore releases them."""
    host = PciHost()
    pio.insert(CONFIG_ADDRESS, PORT_COUNT, host, "pci (mechanism 1)")
    router = MsiRouter(vm, commit_routes)
    devices = PciDevices(host, router)
    if placement is not None:
        router.hold()
    for name, dev in virtio_devices(config):
        fn = VirtioPciDevice(dev, mem, router, mmio, vm, name=name)
        fn.slot = host.add(fn)
        bar0, command = placement.get(name, (None, None)) if placement is not None else (None, None)
        if bar0 is None or command is None:
            bar0, command = PCI_BAR_BASE + fn.slot * BAR_SIZE, CMD_MEMORY | CMD_BUS_MASTER
        fn.config.set_bar_address(0, bar0)
        fn.config.write(COMMAND, (command & 0xFFFF).to_bytes(2, "little"))
        devices.functions[name] = fn
    return devices
