"""The state tree of a machine, as the ``state`` section of a snapshot holds it.

::

    MachineState
     ├── config            the MachineConfig (JSON) the machine was built from
     ├── memory_layout     [(guest address, size)] of the RAM regions, in order
     ├── vcpus             [VcpuState]           (vnix.vmm.vcpu: regs, sregs, FPU, XSAVE, XCRs,
     │                                            LAPIC, MSRs with the TSC, events, MP state, debugregs)
     ├── vm                VmState               (PIC master, PIC slave, IOAPIC, PIT, kvmclock)
     ├── serial, rtc, i8042, pci_address          (the legacy devices, the PCI host's CONFIG_ADDRESS)
     ├── pci               {name: VirtioPciState} (config space, BAR, MSI-X table and pending bits,
     │                                            status, features, queues, the device's own state)
     └── base_id, base_path                       a diff snapshot's base (None in a full one)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vnix.vmm.devices.legacy.i8042 import I8042State
from vnix.vmm.devices.legacy.rtc import RtcState
from vnix.vmm.devices.legacy.serial import SerialState
from vnix.vmm.devices.pci.virtio_pci import VirtioPciState
from vnix.vmm.devices.virtio.balloon.persist import BalloonState
from vnix.vmm.devices.virtio.blk.persist import BlkState
from vnix.vmm.devices.virtio.control import ControlState
from vnix.vmm.devices.virtio.net.persist import NetState
from vnix.vmm.devices.virtio.queue import QueueState
from vnix.vmm.devices.virtio.rng.persist import RngState
from vnix.vmm.devices.virtio.vsock.persist import VsockState
from vnix.vmm.snapshot.codec import register
from vnix.vmm.vcpu import VcpuState


@dataclass
class VmState:
    """The VM-wide state KVM keeps: KVM_GET_IRQCHIP for chips 0, 1, 2 (PIC master, PIC slave,
    IOAPIC), KVM_GET_PIT2, and KVM_GET_CLOCK (kvmclock's nanoseconds and flags)."""

    irqchips: list[bytes]
    pit2: bytes
    clock: int
    clock_flags: int = 0


@dataclass
class MachineState:
    config: str
    memory_layout: list[list[int]]
    vcpus: list[VcpuState]
    vm: VmState
    serial: SerialState
    rtc: RtcState
    i8042: I8042State
    pci_address: int
    pci: dict[str, VirtioPciState] = field(default_factory=dict)
    saved_at_unix: float = 0.0
    base_id: str | None = None
    base_path: str | None = None

    @property
    def ram_bytes(self) -> int:
        return sum(size for _, size in self.memory_layout)


register(MachineState, VmState, VcpuState, SerialState, RtcState, I8042State, VirtioPciState, ControlState,
         QueueState, BlkState, RngState, NetState, BalloonState, VsockState)
