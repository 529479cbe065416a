"""virtio-net (virtio 1.2, 5.1): device.py (the device), tap.py (the host side), persist.py."""
from __future__ import annotations

from vnix.vmm.devices.virtio.net.device import VirtioNet

__all__ = ["VirtioNet"]
