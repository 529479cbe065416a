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

from vnix.vmm.record import Record
from vnix.vmm.snapshot.codec import register, register_lazy

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)

if TYPE_CHECKING:
    from vnix.vmm.devices.legacy.i8042 import I8042State
    from vnix.vmm.devices.legacy.rtc import RtcState
    from vnix.vmm.devices.legacy.serial import SerialState
    from vnix.vmm.devices.pci.virtio_pci import VirtioPciState
    from vnix.vmm.vcpu import VcpuState


class VmState(Record):
    """The VM-wide state KVM keeps: KVM_GET_IRQCHIP for chips 0, 1, 2 (PIC master, PIC slave,
    IOAPIC), KVM_GET_PIT2, and KVM_GET_CLOCK (kvmclock's nanoseconds and flags)."""

    __slots__ = ("irqchips", "pit2", "clock", "clock_flags")

    def __init__(self, irqchips: list[bytes], pit2: bytes, clock: int, clock_flags: int = 0) -> None:
        self.irqchips, self.pit2, self.clock, self.clock_flags = irqchips, pit2, clock, clock_flags


class MachineState(Record):
    __slots__ = ("config", "memory_layout", "vcpus", "vm", "serial", "rtc", "i8042", "pci_address", "pci",
                 "saved_at_unix", "base_id", "base_path")

    def __init__(self, config: str, memory_layout: list[list[int]], vcpus: list[VcpuState], vm: VmState,
                 serial: SerialState, rtc: RtcState, i8042: I8042State, pci_address: int,
                 pci: dict[str, VirtioPciState], saved_at_unix: float = 0.0, base_id: str | None = None,
                 base_path: str | None = None) -> None:
        self.config, self.memory_layout, self.vcpus, self.vm = config, memory_layout, vcpus, vm
        self.serial, self.rtc, self.i8042, self.pci_address, self.pci = serial, rtc, i8042, pci_address, pci
        self.saved_at_unix, self.base_id, self.base_path = saved_at_unix, base_id, base_path

    @property
    def ram_bytes(self) -> int:
        return sum(size for _, size in self.memory_layout)


register(MachineState, VmState)
register_lazy("vnix.vmm.vcpu", "VcpuState")
register_lazy("vnix.vmm.devices.legacy.serial", "SerialState")
register_lazy("vnix.vmm.devices.legacy.rtc", "RtcState")
register_lazy("vnix.vmm.devices.legacy.i8042", "I8042State")
register_lazy("vnix.vmm.devices.pci.virtio_pci", "VirtioPciState")
register_lazy("vnix.vmm.devices.virtio.control", "ControlState")
register_lazy("vnix.vmm.devices.virtio.queue", "QueueState")
register_lazy("vnix.vmm.devices.virtio.blk.persist", "BlkState")
register_lazy("vnix.vmm.devices.virtio.rng.persist", "RngState")
register_lazy("vnix.vmm.devices.virtio.net.persist", "NetState")
register_lazy("vnix.vmm.devices.virtio.balloon.persist", "BalloonState")
register_lazy("vnix.vmm.devices.virtio.vsock.persist", "VsockState")
