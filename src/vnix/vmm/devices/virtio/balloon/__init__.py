"""virtio-balloon (virtio 1.2, 5.5): device.py (the device), persist.py."""
from __future__ import annotations

from vnix.vmm.devices.virtio.balloon.device import VirtioBalloon

__all__ = ["VirtioBalloon"]
