"""PCI for the native VMM: a host bridge on configuration mechanism 1 and virtio-pci devices.

    config.py      a function's 256-byte configuration space (type 0 header, BARs, capabilities)
    host.py        the host bridge: CONFIG_ADDRESS 0xCF8 / CONFIG_DATA 0xCFC, bus 0
    irq.py         GSI routing for MSI (KVM_SET_GSI_ROUTING) and irqfds
    msix.py        the MSI-X capability, table and PBA (PCI Local Bus 3.0, 6.8.2)
    virtio_pci.py  the virtio-pci modern transport (virtio 1.2, 4.1)
    setup.py       devices from a MachineConfig onto the buses

Error tree::

    PciError                    (a VmmError)
     └── PciSetupError          a device cannot be placed (no slot, no address space)
"""
from __future__ import annotations

from vnix.vmm import VmmError


class PciError(VmmError):
    """Root of the PCI package's errors."""


class PciSetupError(PciError):
    """A host-side wiring error: no free slot, BAR space exhausted."""


__all__ = ["PciError", "PciSetupError"]
