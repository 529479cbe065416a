"""virtio-vsock (virtio 1.2, 5.10) on Unix sockets: device.py (the device and the host side),
connection.py (one stream), packet.py (the header), persist.py."""
from __future__ import annotations

from vnix.vmm.devices.virtio.vsock.device import VirtioVsock

__all__ = ["VirtioVsock"]
