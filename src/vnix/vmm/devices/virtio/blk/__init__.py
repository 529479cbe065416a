"""virtio-blk (virtio 1.2, 5.2): device.py (the device), request.py (one request), persist.py."""
from __future__ import annotations

from vnix.vmm.devices.virtio.blk.device import VirtioBlk

__all__ = ["VirtioBlk"]
