"""KVM ioctl numbers and constants, computed as ``include/uapi/linux/kvm.h`` does.

An ioctl number packs direction, argument size, type and number (``include/uapi/asm-generic/
ioctl.h``)::

    bits 31-30  direction (_IOC_NONE 0, _IOC_WRITE 1, _IOC_READ 2)
    bits 29-16  size of the argument struct
    bits 15-8   type (KVMIO = 0xAE)
    bits 7-0    number

Sizes come from the ctypes copies in :mod:`vnix.kvm.structs`, so a wrong struct shows up as a
wrong ioctl number in the unit tests (which compare against the kernel's values).
"""
from __future__ import annotations

import ctypes

from vnix.kvm import structs as s

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, cls: type) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(cls))


def _iow(nr: int, cls: type) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(cls))


def _iowr(nr: int, cls: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(cls))


# -- system ioctls (on the /dev/kvm fd) ----------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, s.kvm_msr_list)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, s.kvm_cpuid2)

# -- VM ioctls -----------------------------------------------------------------------------------
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, s.kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, s.kvm_irq_level)
KVM_GET_IRQCHIP = _iowr(0x62, s.kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, s.kvm_irqchip)  # sic: the kernel declares it _IOR
KVM_SET_GSI_ROUTING = _iow(0x6A, s.kvm_irq_routing)
KVM_IRQFD = _iow(0x76, s.kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, s.kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, s.kvm_ioeventfd)
KVM_SET_CLOCK = _iow(0x7B, s.kvm_clock_data)
KVM_GET_CLOCK = _ior(0x7C, s.kvm_clock_data)
KVM_GET_PIT2 = _ior(0x9F, s.kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, s.kvm_pit_state2)
KVM_SIGNAL_MSI = _iow(0xA5, s.kvm_msi)

# -- vCPU ioctls ---------------------------------------------------------------------------------
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, s.kvm_regs)
KVM_SET_REGS = _iow(0x82, s.kvm_regs)
KVM_GET_SREGS = _ior(0x83, s.kvm_sregs)
KVM_SET_SREGS = _iow(0x84, s.kvm_sregs)
KVM_GET_MSRS = _iowr(0x88, s.kvm_msrs)
KVM_SET_MSRS = _iow(0x89, s.kvm_msrs)
KVM_GET_FPU = _ior(0x8C, s.kvm_fpu)
KVM_SET_FPU = _iow(0x8D, s.kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, s.kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, s.kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, s.kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, s.kvm_cpuid2)
KVM_GET_MP_STATE = _ior(0x98, s.kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, s.kvm_mp_state)
KVM_NMI = _io(0x9A)
KVM_TRANSLATE = _iowr(0x85, s.kvm_translation)
KVM_GET_VCPU_EVENTS = _ior(0x9F, s.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, s.kvm_vcpu_events)
KVM_GET_DEBUGREGS = _ior(0xA1, s.kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, s.kvm_debugregs)
KVM_GET_XSAVE = _ior(0xA4, s.kvm_xsave)
KVM_SET_XSAVE = _iow(0xA5, s.kvm_xsave)
KVM_GET_XCRS = _ior(0xA6, s.kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, s.kvm_xcrs)

KVM_API_VERSION = 12

# -- capabilities (KVM_CHECK_EXTENSION) ----------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136

# Names for error messages ("KVM lacks KVM_CAP_PIT2").
CAPABILITY_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("KVM_CAP_")
}

# -- exit reasons (kvm_run.exit_reason) ----------------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3

# -- misc flags ----------------------------------------------------------------------------------
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

KVM_PIT_SPEAKER_DUMMY = 1

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1

KVM_MAX_CPUID_ENTRIES = 256
