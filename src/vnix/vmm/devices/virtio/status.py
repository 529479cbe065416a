"""The device status state machine (virtio 1.2, 3.1.1 "Driver Requirements: Device
Initialization"), written as a table as Firecracker's MMIO transport does.

The driver walks 0 -> ACKNOWLEDGE -> +DRIVER -> +FEATURES_OK -> +DRIVER_OK, each write setting one
more bit. Writing 0 resets the device (4.1.4.3.1). Setting FAILED is always allowed (the driver
gave up). DEVICE_NEEDS_RESET is set by the device, never by the driver (2.1.2). Any other write is
ignored (and counted) rather than obeyed: a guest cannot skip feature negotiation.
"""
from __future__ import annotations

from vnix.vmm.devices.virtio.constants import (
    STATUS_ACKNOWLEDGE as ACK,
    STATUS_DRIVER as DRV,
    STATUS_DRIVER_OK as DOK,
    STATUS_FAILED,
    STATUS_FEATURES_OK as FOK,
)

#: (current driver-visible status without NEEDS_RESET/FAILED, status written) pairs that are legal.
TRANSITIONS: frozenset[tuple[int, int]] = frozenset(
    {
        (0, ACK),
        (ACK, ACK | DRV),
        (ACK | DRV, ACK | DRV | FOK),
        (ACK | DRV | FOK, ACK | DRV | FOK | DOK),
    }
)


def next_status(current: int, written: int) -> int | None:
    """The status after the driver writes ``written``; None if the write is illegal (ignored).

    Reset (0) is handled by the caller, since it also resets queues and the device."""
    if written & STATUS_FAILED:
        return current | STATUS_FAILED
    base = current & (ACK | DRV | FOK | DOK)
    if (base, written) in TRANSITIONS:
        return (current & ~(ACK | DRV | FOK | DOK)) | written
    if written == base:  # rewriting the same value is harmless (Linux re-writes on probe)
        return current
    return None
