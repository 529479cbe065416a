"""virtio-rng / entropy device (virtio 1.2, 5.4): device.py, persist.py."""
from __future__ import annotations

from vnix.vmm.devices.virtio.rng.device import VirtioRng

__all__ = ["VirtioRng"]
