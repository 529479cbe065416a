"""virtio over PCI, modern interface only (virtio 1.2, 4.1).

PCI identity (4.1.2): vendor 0x1AF4, device 0x1040 + virtio device ID, revision 1 (no legacy
interface), subsystem vendor 0x1AF4, subsystem 0x1100 (what QEMU uses).

BAR0, a 32-bit memory BAR of 32 KiB, holds every structure (4.1.4)::

    0x0000  common configuration (struct virtio_pci_common_cfg, 0x38 bytes)   cfg_type 1
    0x1000  ISR status (1 byte; reading clears it)                           cfg_type 3
    0x2000  device-specific configuration                                     cfg_type 4
    0x3000  notifications: queue i at 0x3000 + 4 * i (notify_off_multiplier 4) cfg_type 2
    0x4000  MSI-X table (16 bytes a vector: one per queue + one for configuration changes)
    0x6000  MSI-X pending bits

plus a VIRTIO_PCI_CAP_PCI_CFG capability (cfg_type 5) giving access to BAR0 through
configuration space (4.1.4.9). The VMM places BAR0 in the 32-bit hole (as firmware would); the
guest may move it: the BAR is mapped on the MMIO bus, with one ioeventfd per queue on the
notify addresses, only while memory decoding is on (command bit 1).

Queue notifications arrive on eventfds (KVM_IOEVENTFD) and are handled on this device's
thread; interrupts leave through MSI-X vectors bound to irqfds. Without MSI-X enabled the
device sets the ISR bits only (no INTx line is wired: Linux and the test kit use MSI-X).
"""
from __future__ import annotations

import logging
import os
import struct

from vnix.vmm.devices.bus import BusError, MmioBus
from vnix.vmm.devices.pci.config import BAR0, COMMAND, CMD_MEMORY, ConfigSpace
from vnix.vmm.devices.pci.msix import CAP_ID as MSIX_CAP_ID
from vnix.vmm.devices.pci.msix import Msix
from vnix.vmm.devices.pci.irq import MsiRouter
from vnix.vmm.devices.virtio.constants import STATUS_DRIVER_OK, VIRTIO_MSI_NO_VECTOR
from vnix.vmm.devices.virtio.control import ControlState, VirtioControl
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.worker import Worker, drain
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from typing import Any, Protocol
else:
    Protocol = object  # the interfaces below are for the type checker; at run time plain classes

log = logging.getLogger(__name__)

VIRTIO_VENDOR = 0x1AF4
VIRTIO_DEVICE_BASE = 0x1040
VIRTIO_SUBSYSTEM = 0x1100
BAR_SIZE = 0x8000
COMMON, ISR, DEVICE, NOTIFY, MSIX_TABLE, MSIX_PBA = 0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000
COMMON_LEN = 0x38
NOTIFY_MULTIPLIER = 4
CAP_VENDOR = 0x09
CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE, CFG_PCI = 1, 2, 3, 4, 5
ISR_QUEUE, ISR_CONFIG = 1, 2
CLASS_CODES = {1: 0x020000, 2: 0x018000, 4: 0x00FF00, 5: 0x050000, 19: 0x078000}

# struct virtio_pci_common_cfg (4.1.4.3): offset -> (name, size)
_COMMON_FIELDS = {
    0x00: ("device_feature_select", 4), 0x04: ("device_feature", 4),
    0x08: ("driver_feature_select", 4), 0x0C: ("driver_feature", 4),
    0x10: ("config_msix_vector", 2), 0x12: ("num_queues", 2), 0x14: ("device_status", 1),
    0x15: ("config_generation", 1), 0x16: ("queue_select", 2), 0x18: ("queue_size", 2),
    0x1A: ("queue_msix_vector", 2), 0x1C: ("queue_enable", 2), 0x1E: ("queue_notify_off", 2),
    0x20: ("queue_desc_lo", 4), 0x24: ("queue_desc_hi", 4), 0x28: ("queue_driver_lo", 4),
    0x2C: ("queue_driver_hi", 4), 0x30: ("queue_device_lo", 4), 0x34: ("queue_device_hi", 4),
}
_QUEUE_ADDRS = {"queue_desc": "desc_table", "queue_driver": "avail_ring", "queue_device": "used_ring"}


class IoEventVm(Protocol):
    def ioeventfd(self, fd: int, addr: int, length: int, *, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False) -> None: ...


class VirtioPciState(Record):
    __slots__ = ("slot", "bar0", "command", "isr", "msix_table", "msix_pending", "msix_control", "control")

    def __init__(self, slot: int, bar0: int, command: int, isr: int, msix_table: list[list[int]],
                 msix_pending: list[bool], msix_control: int, control: ControlState) -> None:
        self.slot, self.bar0, self.command, self.isr = slot, bar0, command, isr
        self.msix_table, self.msix_pending, self.msix_control, self.control = msix_table, msix_pending, msix_control, control


class VirtioPciDevice:
    """One virtio device as a PCI function on bus 0."""

    def __init__(self, device: VirtioDevice, mem: GuestMemory, router: MsiRouter, mmio: MmioBus,
                 vm: IoEventVm | None = None, *, name: str = "virtio", threaded: bool = True) -> None:
        self.device, self.mmio, self.vm, self.name = device, mmio, vm, name
        self.control = VirtioControl(device, mem, self)
        nq = len(self.control.queues)
        self.msix = Msix(nq + 1, router)
        self.isr = 0
        self.mapped_at: int | None = None
        self.slot = -1
        self.threaded = threaded
        self.notify_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(nq)]
        self.worker = Worker(f"virtio-{name}")
        for i, fd in enumerate(self.notify_fds):
            self.worker.add(fd, self._kick_handler(i, fd))
        for fd, handler in device.host_fds():
            self.worker.add(fd, handler)
        device.attach_watch(self.worker)
        self.control.on_activate = self._activated
        self.config = self._build_config(device, nq)

    def _kick_handler(self, index: int, fd: int) -> Any:
        def handle() -> None:
            drain(fd)
            self.device.notify(index)
        return handle

    def _build_config(self, device: VirtioDevice, nq: int) -> ConfigSpace:
        cfg = ConfigSpace(VIRTIO_VENDOR, VIRTIO_DEVICE_BASE + device.device_id,
                          CLASS_CODES.get(device.device_id, 0xFF0000), revision=1,
                          subsystem_vendor=VIRTIO_VENDOR, subsystem=VIRTIO_SUBSYSTEM)
        cfg.add_bar32(0, BAR_SIZE)
        dev_len = max(4, (len(device.config_bytes()) + 3) & ~3)
        for cfg_type, offset, length in ((CFG_COMMON, COMMON, COMMON_LEN), (CFG_ISR, ISR, 4),
                                         (CFG_DEVICE, DEVICE, dev_len)):
            cfg.add_capability(CAP_VENDOR, struct.pack("<BBBB2xII", 16, cfg_type, 0, 0, offset, length))
        cfg.add_capability(CAP_VENDOR, struct.pack("<BBBB2xIII", 20, CFG_NOTIFY, 0, 0, NOTIFY,
                                                   NOTIFY_MULTIPLIER * nq, NOTIFY_MULTIPLIER))
        # 4.1.4.9: bar, offset, length and pci_cfg_data are written by the driver
        self.pci_cfg_cap = cfg.add_capability(
            CAP_VENDOR, struct.pack("<BBBB2xIII", 20, CFG_PCI, 0, 0, 0, 0, 0),
            writable=bytes([0, 0, 0xFF, 0, 0, 0]) + b"\xff" * 12)
        body, mask = self.msix.capability_body(MSIX_TABLE, MSIX_PBA)
        self.msix_cap = cfg.add_capability(MSIX_CAP_ID, body, mask)
        cfg.on_write = self._config_written
        return cfg

    # -- configuration space side effects ----------------------------------------------------------
    def _config_written(self, offset: int, size: int) -> None:
        end = offset + size
        if offset < COMMAND + 2 and end > COMMAND or offset < BAR0 + 4 and end > BAR0:
            self.remap()
        if offset < self.msix_cap + 4 and end > self.msix_cap + 2:
            self.msix.control_written(self.config.u16(self.msix_cap + 2))
        data_at = self.pci_cfg_cap + 16
        if offset < data_at + 4 and end > data_at:
            self._pci_cfg_access(write=True)

    def _pci_cfg_access(self, write: bool) -> None:
        """4.1.4.9.1: an access of cap.length (1, 2 or 4) bytes at cap.offset of BAR cap.bar."""
        c = self.pci_cfg_cap
        bar, off, length = self.config.data[c + 4], self.config.u32(c + 8), self.config.u32(c + 12)
        if bar != 0 or length not in (1, 2, 4) or off % length or off + length > BAR_SIZE:
            return
        if write:
            self.write(off, bytes(self.config.data[c + 16 : c + 16 + length]))
        else:
            self.config.data[c + 16 : c + 16 + length] = self.read(off, length)

    def config_read(self, offset: int, size: int) -> bytes:
        data_at = self.pci_cfg_cap + 16
        if offset < data_at + 4 and offset + size > data_at:
            self._pci_cfg_access(write=False)
        return self.config.read(offset, size)

    def remap(self) -> None:
        """Map BAR0 where the guest put it while memory decoding is on; unmap otherwise."""
        addr = self.config.bar_address(0)
        want = addr if self.config.command & CMD_MEMORY and addr else None
        if want == self.mapped_at:
            return
        if self.mapped_at is not None:
            self.mmio.remove(self.mapped_at)
            self._ioeventfds(self.mapped_at, deassign=True)
            self.mapped_at = None
        if want is not None:
            try:
                self.mmio.insert(want, BAR_SIZE, self, f"virtio-pci {self.name} BAR0")
            except BusError as exc:
                log.warning("%s: BAR0 at %#x not mapped: %s", self.name, want, exc)
                return
            self.mapped_at = want
            self._ioeventfds(want, deassign=False)

    def _ioeventfds(self, base: int, deassign: bool) -> None:
        if self.vm is None:
            return
        for i, fd in enumerate(self.notify_fds):
            try:  # length 0: any access size (KVM_CAP_IOEVENTFD_ANY_LENGTH)
                self.vm.ioeventfd(fd, base + NOTIFY + NOTIFY_MULTIPLIER * i, 0, deassign=deassign)
            except OSError as exc:  # the MMIO path below still works, only slower
                log.warning("%s: ioeventfd for queue %d: %s", self.name, i, exc)

    # -- Interrupt (what the device calls) ---------------------------------------------------------
    def used(self, queue: int) -> None:
        self.isr |= ISR_QUEUE
        vec = self.control.queues[queue].vector
        if vec != VIRTIO_MSI_NO_VECTOR:
            self.msix.fire(vec)

    def config_changed(self) -> None:
        self.isr |= ISR_CONFIG
        if self.control.config_vector != VIRTIO_MSI_NO_VECTOR:
            self.msix.fire(self.control.config_vector)

    def _activated(self) -> None:
        if self.threaded:
            self.worker.start()

    # -- BAR0 (the MMIO bus device) ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if COMMON <= offset < COMMON + COMMON_LEN:
            with self.device.lock:
                return self._common_read(offset - COMMON, size)
        if offset == ISR:
            with self.device.lock:
                value, self.isr = self.isr, 0  # 4.1.4.5: reading clears
            return bytes([value]).ljust(size, b"\0")
        if DEVICE <= offset < NOTIFY:
            return self.device.read_config(offset - DEVICE, size)
        if MSIX_TABLE <= offset < MSIX_PBA:
            return self.msix.read_table(offset - MSIX_TABLE, size)
        if MSIX_PBA <= offset < BAR_SIZE:
            return self.msix.read_pba(offset - MSIX_PBA, size)
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        if COMMON <= offset < COMMON + COMMON_LEN:
            with self.device.lock:
                self._common_write(offset - COMMON, data)
        elif DEVICE <= offset < NOTIFY:
            with self.device.lock:
                self.device.write_config(offset - DEVICE, data)
        elif NOTIFY <= offset < NOTIFY + NOTIFY_MULTIPLIER * len(self.notify_fds):
            # only reached without an ioeventfd (tests, or KVM refused one): same path
            index = (offset - NOTIFY) // NOTIFY_MULTIPLIER
            if self.threaded:
                os.eventfd_write(self.notify_fds[index], 1)
            else:
                self.device.notify(index)
        elif MSIX_TABLE <= offset < MSIX_PBA:
            self.msix.write_table(offset - MSIX_TABLE, data)

    def _common_read(self, offset: int, size: int) -> bytes:
        field = _COMMON_FIELDS.get(offset)
        if field is None or size not in (field[1], 8 if field[1] == 4 and offset >= 0x20 else -1):
            return bytes(size)
        if size == 8:
            return self._common_read(offset, 4) + self._common_read(offset + 4, 4)
        name, width = field
        ctl, q = self.control, self.control.selected
        values = {
            "device_feature_select": ctl.device_feature_select, "device_feature": ctl.device_features_word(),
            "driver_feature_select": ctl.driver_feature_select, "driver_feature": ctl.driver_features_word(),
            "config_msix_vector": ctl.config_vector, "num_queues": len(ctl.queues),
            "device_status": ctl.status, "config_generation": ctl.config_generation,
            "queue_select": ctl.queue_select,
        }
        if name in values:
            value = values[name]
        elif q is None:
            value = 0
        elif name == "queue_size":
            value = q.size
        elif name == "queue_msix_vector":
            value = q.vector
        elif name == "queue_enable":
            value = int(q.ready)
        elif name == "queue_notify_off":
            value = ctl.queue_select
        else:
            base, half = name.rsplit("_", 1)
            full = getattr(q, _QUEUE_ADDRS[base])
            value = full >> 32 if half == "hi" else full & 0xFFFFFFFF
        return value.to_bytes(width, "little")

    def _common_write(self, offset: int, data: bytes) -> None:
        field = _COMMON_FIELDS.get(offset)
        if field is not None and len(data) == 8 and field[1] == 4 and offset >= 0x20 and offset % 8 == 0:
            self._common_write(offset, data[:4])
            self._common_write(offset + 4, data[4:])
            return
        if field is None or len(data) != field[1]:
            self.control.ignored_writes += 1
            return
        name, value, ctl = field[0], int.from_bytes(data, "little"), self.control
        if name == "device_feature_select":
            ctl.device_feature_select = value
        elif name == "driver_feature_select":
            ctl.driver_feature_select = value
        elif name == "driver_feature":
            ctl.write_driver_features_word(value)
        elif name == "config_msix_vector":  # 4.1.5.1.2: an unusable vector reads back NO_VECTOR
            ctl.config_vector = value if value < self.msix.count else VIRTIO_MSI_NO_VECTOR
        elif name == "device_status":
            ctl.write_status(value)
            if value == 0:
                self.isr = 0
        elif name == "queue_select":
            ctl.queue_select = value
        elif name == "queue_msix_vector":
            q = ctl.selected
            if q is not None:
                q.vector = value if value < self.msix.count else VIRTIO_MSI_NO_VECTOR
        elif ctl.queue_writable():
            q = ctl.selected
            assert q is not None
            if name == "queue_size":
                q.size = value  # checked (power of two, <= max) at DRIVER_OK
            elif name == "queue_enable":
                q.ready = value == 1  # 4.1.4.3.2: writing 0 is not allowed; it is ignored
            elif name.startswith("queue_") and name[-3:] in ("_lo", "_hi"):
                attr = _QUEUE_ADDRS[name[:-3]]
                old = getattr(q, attr)
                new = (old & 0xFFFFFFFF) | (value << 32) if name.endswith("hi") else (old & ~0xFFFFFFFF) | value
                setattr(q, attr, new)
            else:
                ctl.ignored_writes += 1
        else:
            ctl.ignored_writes += 1

    # -- life cycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        self.worker.close()
        self.device.reset()
        self.device.close()
        for fd in self.notify_fds:
            os.close(fd)
        self.notify_fds = []
        self.msix.close()

    def save(self) -> VirtioPciState:
        with self.device.lock:
            return VirtioPciState(self.slot, self.config.bar_address(0), self.config.command, self.isr,
                                  [list(e) for e in self.msix.table], list(self.msix.pending),
                                  self.config.u16(self.msix_cap + 2), self.control.save())

    def restore(self, state: VirtioPciState) -> None:
        """Load ``state`` into this freshly built transport (same device type, same slot)."""
        with self.device.lock:
            self.config.set_bar_address(0, state.bar0)
            self.config.data[COMMAND : COMMAND + 2] = state.command.to_bytes(2, "little")
            self.config.data[self.msix_cap + 2 : self.msix_cap + 4] = state.msix_control.to_bytes(2, "little")
            self.msix.table = [list(e) for e in state.msix_table]
            self.msix.pending = list(state.msix_pending)
            for vec in range(self.msix.count):
                self.msix._route(vec)
            self.msix.control_written(state.msix_control)
            self.isr = state.isr
            self.remap()
            self.control.restore(state.control)
            if self.control.status & STATUS_DRIVER_OK and self.threaded:
                self.worker.start()
