"""virtio 1.x devices, transport-independent (OASIS virtio v1.2, cs01).

Layout (one concept a module; one folder per device with the same file roles)::

    constants.py  numbers from the spec: status bits, feature bits, device IDs, ring flags
    status.py     the device status state machine, as a table of allowed transitions (3.1.1)
    queue.py      the split virtqueue (2.7): every guest address, length, index and chain checked
    mock.py       a guest-driver mock that writes descriptor chains and rings into GuestMemory
    chain.py      reading/writing a descriptor chain's buffers (gather / scatter)
    device.py     the VirtioDevice interface every device implements, and Interrupt
    control.py    the transport-independent part of a transport: status, features, queues, reset
    worker.py     a device thread: waits on queue eventfds (ioeventfd) and device fds
    <dev>/device.py   the device (features, config space, queue handling)
    <dev>/persist.py  its State dataclass (save/restore)

Error tree::

    VirtioError                       (a VmmError)
     ├── QueueError                   the driver broke the ring: the device goes to NEEDS_RESET
     │    └── ChainError              one malformed descriptor chain: that request fails
     └── DeviceSetupError             a host-side device cannot be created (image, tap, socket)
"""
from __future__ import annotations

from vnix.vmm import VmmError


class VirtioError(VmmError):
    """Root of the virtio package's errors."""


class QueueError(VirtioError):
    """The driver put something impossible in a ring (an index past the queue size, a ring
    outside RAM, more available entries than the queue holds): the queue cannot be trusted."""


class ChainError(QueueError):
    """One descriptor chain is malformed (loop, too long, buffer outside RAM, readable after
    writable, ...): the request it carries fails, the queue goes on."""


class DeviceSetupError(VirtioError):
    """A device's host side cannot be set up (a disk image, a tap, a socket)."""


__all__ = ["VirtioError", "QueueError", "ChainError", "DeviceSetupError"]
