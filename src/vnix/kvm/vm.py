"""The VM handle: memory slots, in-kernel irqchip and PIT, interrupts, eventfds, clock."""
from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from vnix.kvm import ioctls as k
from vnix.kvm import structs as s
from vnix.kvm._ioctl import ioctl, ioctl_obj
from vnix.kvm.vcpu import Vcpu


def routing_irqchip(gsi: int, irqchip: int, pin: int) -> s.kvm_irq_routing_entry:
    """A GSI routed to a pin of the PIC (chip 0/1) or IOAPIC (chip 2)."""
    entry = s.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_IRQCHIP)
    entry.u.irqchip.irqchip = irqchip
    entry.u.irqchip.pin = pin
    return entry


def routing_msi(gsi: int, address: int, data: int) -> s.kvm_irq_routing_entry:
    """A GSI that sends the MSI (address, data) when raised."""
    entry = s.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_MSI)
    entry.u.msi.address_lo = address & 0xFFFFFFFF
    entry.u.msi.address_hi = address >> 32
    entry.u.msi.data = data
    return entry


class Vm:
    """A KVM virtual machine fd (from :meth:`vnix.kvm.Kvm.create_vm`)."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self._vcpu_mmap_size = vcpu_mmap_size
        self._irq_level = s.kvm_irq_level()
        self._irq_level_addr = ctypes.addressof(self._irq_level)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap, op="KVM_CHECK_EXTENSION")

    # -- memory ---------------------------------------------------------------------------------
    def set_user_memory_region(
        self, slot: int, guest_addr: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        """Map ``size`` bytes at host ``host_addr`` to ``guest_addr``; size 0 deletes the slot."""
        region = s.kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=guest_addr, memory_size=size, userspace_addr=host_addr
        )
        ioctl_obj(self.fd, k.KVM_SET_USER_MEMORY_REGION, region, op="KVM_SET_USER_MEMORY_REGION")

    def get_dirty_log(self, slot: int, size: int) -> bytes:
        """The dirty bitmap of a slot of ``size`` bytes (one bit a 4 KiB page, cleared by reading)."""
        pages = (size + 4095) // 4096
        bitmap = (ctypes.c_uint64 * ((pages + 63) // 64))()
        log = s.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        ioctl_obj(self.fd, k.KVM_GET_DIRTY_LOG, log, op="KVM_GET_DIRTY_LOG")
        return bytes(bitmap)

    # -- platform devices in the kernel ---------------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, k.KVM_SET_TSS_ADDR, addr, op="KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        value = ctypes.c_uint64(addr)
        ioctl_obj(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, value, op="KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        ioctl(self.fd, k.KVM_CREATE_IRQCHIP, op="KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = k.KVM_PIT_SPEAKER_DUMMY) -> None:
        ioctl_obj(self.fd, k.KVM_CREATE_PIT2, s.kvm_pit_config(flags=flags), op="KVM_CREATE_PIT2")

    def get_irqchip(self, chip_id: int) -> s.kvm_irqchip:
        chip = s.kvm_irqchip(chip_id=chip_id)
        ioctl_obj(self.fd, k.KVM_GET_IRQCHIP, chip, op="KVM_GET_IRQCHIP")
        return chip

    def set_irqchip(self, chip: s.kvm_irqchip) -> None:
        ioctl_obj(self.fd, k.KVM_SET_IRQCHIP, chip, op="KVM_SET_IRQCHIP")

    def get_pit2(self) -> s.kvm_pit_state2:
        state = s.kvm_pit_state2()
        ioctl_obj(self.fd, k.KVM_GET_PIT2, state, op="KVM_GET_PIT2")
        return state

    def set_pit2(self, state: s.kvm_pit_state2) -> None:
        ioctl_obj(self.fd, k.KVM_SET_PIT2, state, op="KVM_SET_PIT2")

    def get_clock(self) -> s.kvm_clock_data:
        data = s.kvm_clock_data()
        ioctl_obj(self.fd, k.KVM_GET_CLOCK, data, op="KVM_GET_CLOCK")
        return data

    def set_clock(self, data: s.kvm_clock_data) -> None:
        ioctl_obj(self.fd, k.KVM_SET_CLOCK, data, op="KVM_SET_CLOCK")

    # -- interrupts -----------------------------------------------------------------------------
    def irq_line(self, irq: int, level: int) -> None:
        """Set GSI ``irq`` to ``level`` (0/1) on the in-kernel PIC+IOAPIC (edge = 1 then 0)."""
        self._irq_level.irq = irq
        self._irq_level.level = level
        ioctl(self.fd, k.KVM_IRQ_LINE, self._irq_level_addr, op="KVM_IRQ_LINE")

    def set_gsi_routing(self, entries: Sequence[s.kvm_irq_routing_entry]) -> None:
        table = s.irq_routing_with(len(entries))()
        table.nr = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        ioctl_obj(self.fd, k.KVM_SET_GSI_ROUTING, table, op="KVM_SET_GSI_ROUTING")

    def signal_msi(self, address: int, data: int) -> int:
        """Inject one MSI; returns >0 delivered, 0 blocked by the guest."""
        msi = s.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return ioctl_obj(self.fd, k.KVM_SIGNAL_MSI, msi, op="KVM_SIGNAL_MSI")

    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None:
        """Raise ``gsi`` whenever eventfd ``fd`` is written (without a trip through user space)."""
        flags = (k.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0) | (
            k.KVM_IRQFD_FLAG_RESAMPLE if resamplefd is not None else 0
        )
        arg = s.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resamplefd or 0)
        ioctl_obj(self.fd, k.KVM_IRQFD, arg, op="KVM_IRQFD")

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        length: int,
        *,
        datamatch: int | None = None,
        pio: bool = False,
        deassign: bool = False,
    ) -> None:
        """Signal eventfd ``fd`` when the guest writes ``length`` bytes at ``addr`` (MMIO or port)."""
        flags = (
            (k.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
            | (k.KVM_IOEVENTFD_FLAG_PIO if pio else 0)
            | (k.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        )
        arg = s.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        ioctl_obj(self.fd, k.KVM_IOEVENTFD, arg, op="KVM_IOEVENTFD")

    # -- vCPUs ----------------------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        fd = ioctl(self.fd, k.KVM_CREATE_VCPU, vcpu_id, op="KVM_CREATE_VCPU")
        return Vcpu(fd, vcpu_id, self._vcpu_mmap_size)
