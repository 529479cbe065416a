"""What every transport does the same way: device status, feature negotiation, queue
configuration, activation at DRIVER_OK and reset (virtio 1.2, 2.1, 2.2, 3.1, 4.1.4.3).

The transport maps its registers onto these fields (virtio-pci: the common configuration
structure, 4.1.4.3); this module decides what each write means.
"""
from __future__ import annotations

import logging

from vnix.vmm.devices.virtio import QueueError
from vnix.vmm.devices.virtio.constants import (
    F_INDIRECT_DESC,
    F_VERSION_1,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VIRTIO_MSI_NO_VECTOR,
    bit,
)
from vnix.vmm.devices.virtio.device import Interrupt, VirtioDevice
from vnix.vmm.devices.virtio.queue import Queue, QueueState
from vnix.vmm.devices.virtio.status import next_status
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


class ControlState(Record):
    __slots__ = ("status", "device_feature_select", "driver_feature_select", "driver_features", "queue_select",
                 "config_generation", "config_vector", "queues", "device")

    def __init__(self, status: int, device_feature_select: int, driver_feature_select: int, driver_features: int,
                 queue_select: int, config_generation: int, config_vector: int,
                 queues: list[QueueState] | None = None, device: object = None) -> None:
        self.status, self.device_feature_select = status, device_feature_select
        self.driver_feature_select, self.driver_features = driver_feature_select, driver_features
        self.queue_select, self.config_generation, self.config_vector = queue_select, config_generation, config_vector
        self.queues = queues if queues is not None else []
        self.device = device  # the device's own state record


class VirtioControl:
    """Status, features and queues of one device behind one transport."""

    def __init__(self, device: VirtioDevice, mem: GuestMemory, interrupt: Interrupt) -> None:
        self.device = device
        self.mem = mem
        self.interrupt = interrupt
        self.queues = [Queue(n) for n in device.queue_sizes]
        self.on_activate: Callable[[], None] = lambda: None  # transport hook (start the thread)
        self.on_reset: Callable[[], None] = lambda: None
        self.ignored_writes = 0
        device.on_needs_reset = self._needs_reset
        self._clear()

    def _clear(self) -> None:
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.queue_select = 0
        self.config_generation = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR

    # -- features (2.2) ---------------------------------------------------------------------
    def device_features_word(self) -> int:
        sel = self.device_feature_select
        return (self.device.device_features() >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0

    def driver_features_word(self) -> int:
        sel = self.driver_feature_select
        return (self.driver_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0

    def write_driver_features_word(self, value: int) -> None:
        """3.1.1: features may only be written before FEATURES_OK."""
        sel = self.driver_feature_select
        if self.status & STATUS_FEATURES_OK or sel >= 2:
            self.ignored_writes += 1
            return
        mask = 0xFFFFFFFF << (32 * sel)
        self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFFFFFF) << (32 * sel))

    # -- queues -----------------------------------------------------------------------------
    @property
    def selected(self) -> Queue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def queue_writable(self) -> bool:
        """4.1.4.3.2: the driver configures a queue before DRIVER_OK, while it is not enabled."""
        q = self.selected
        return q is not None and not q.ready and not self.status & STATUS_DRIVER_OK

    # -- status (2.1, 3.1.1) ----------------------------------------------------------------
    def write_status(self, value: int) -> None:
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        new = next_status(self.status, value)
        if new is None:
            log.info("%s: ignored status write %#x in status %#x", type(self.device).__name__, value, self.status)
            self.ignored_writes += 1
            return
        if new & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            offered = self.device.device_features()
            # 3.1.1 step 5/6: the device leaves FEATURES_OK clear if it cannot accept the subset
            if self.driver_features & ~offered or not self.driver_features & bit(F_VERSION_1):
                log.info("driver features %#x refused (offered %#x)", self.driver_features, offered)
                return
        self.status = new
        if new & STATUS_DRIVER_OK and not self.device.active and not new & STATUS_DEVICE_NEEDS_RESET:
            self._activate()

    def _activate(self) -> None:
        queues = [q for q in self.queues]
        indirect = bool(self.driver_features & bit(F_INDIRECT_DESC))
        try:
            for q in queues:
                q.indirect = indirect
                if q.ready:
                    q.check_layout(self.mem)
        except QueueError as exc:
            self._needs_reset(str(exc))
            return
        self.device.activate(self.mem, queues, self.interrupt, self.driver_features)
        self.on_activate()

    def _needs_reset(self, why: str) -> None:
        """2.1.2: set DEVICE_NEEDS_RESET and send a configuration change notification."""
        if self.status & STATUS_DEVICE_NEEDS_RESET:
            return
        self.status |= STATUS_DEVICE_NEEDS_RESET
        self.config_generation = (self.config_generation + 1) & 0xFF
        try:
            self.interrupt.config_changed()
        except Exception:  # noqa: BLE001 - interrupt delivery is best effort here
            log.exception("config interrupt failed")

    def reset(self) -> None:
        self.device.reset()
        for q in self.queues:
            q.reset()
        self._clear()
        self.on_reset()

    # -- snapshots --------------------------------------------------------------------------
    def save(self) -> ControlState:
        save_device = getattr(self.device, "save", None)
        return ControlState(
            self.status, self.device_feature_select, self.driver_feature_select, self.driver_features,
            self.queue_select, self.config_generation, self.config_vector,
            [q.save() for q in self.queues], save_device() if save_device else None,
        )

    def restore(self, state: ControlState) -> None:
        """Put a freshly built control (same device type) into ``state``; re-activates the
        device if the driver had finished (DRIVER_OK), so in-flight work resumes."""
        if len(state.queues) != len(self.queues):
            raise QueueError(f"snapshot has {len(state.queues)} queues, device has {len(self.queues)}")
        self.status = state.status
        self.device_feature_select, self.driver_feature_select = state.device_feature_select, state.driver_feature_select
        self.driver_features, self.queue_select = state.driver_features, state.queue_select
        self.config_generation, self.config_vector = state.config_generation, state.config_vector
        self.queues = [Queue.restore(q) for q in state.queues]
        if state.device is not None and hasattr(self.device, "load_state"):
            self.device.load_state(state.device)
        if self.status & STATUS_DRIVER_OK and not self.status & STATUS_DEVICE_NEEDS_RESET:
            self.device.activate(self.mem, self.queues, self.interrupt, self.driver_features)
            self.on_activate()
