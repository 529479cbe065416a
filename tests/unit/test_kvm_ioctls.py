"""The ioctl table and struct layouts against the values in the kernel's headers."""
from __future__ import annotations

import ctypes

import pytest

from vnix.kvm import KvmError, MissingCapability
from vnix.kvm import ioctls as k
from vnix.kvm import structs as s


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # From the kernel headers (and strace of QEMU / Firecracker).
        ("KVM_GET_API_VERSION", 0xAE00),
        ("KVM_CREATE_VM", 0xAE01),
        ("KVM_CHECK_EXTENSION", 0xAE03),
        ("KVM_GET_VCPU_MMAP_SIZE", 0xAE04),
        ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05),
        ("KVM_GET_MSR_INDEX_LIST", 0xC004AE02),
        ("KVM_CREATE_VCPU", 0xAE41),
        ("KVM_GET_DIRTY_LOG", 0x4010AE42),
        ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46),
        ("KVM_SET_TSS_ADDR", 0xAE47),
        ("KVM_SET_IDENTITY_MAP_ADDR", 0x4008AE48),
        ("KVM_CREATE_IRQCHIP", 0xAE60),
        ("KVM_IRQ_LINE", 0x4008AE61),
        ("KVM_GET_IRQCHIP", 0xC208AE62),
        ("KVM_SET_IRQCHIP", 0x8208AE63),
        ("KVM_SET_GSI_ROUTING", 0x4008AE6A),
        ("KVM_IRQFD", 0x4020AE76),
        ("KVM_CREATE_PIT2", 0x4040AE77),
        ("KVM_IOEVENTFD", 0x4040AE79),
        ("KVM_SET_CLOCK", 0x4030AE7B),
        ("KVM_GET_CLOCK", 0x8030AE7C),
        ("KVM_GET_PIT2", 0x8070AE9F),
        ("KVM_SET_PIT2", 0x4070AEA0),
        ("KVM_SIGNAL_MSI", 0x4020AEA5),
        ("KVM_RUN", 0xAE80),
        ("KVM_GET_REGS", 0x8090AE81),
        ("KVM_SET_REGS", 0x4090AE82),
        ("KVM_GET_SREGS", 0x8138AE83),
        ("KVM_SET_SREGS", 0x4138AE84),
        ("KVM_GET_MSRS", 0xC008AE88),
        ("KVM_SET_MSRS", 0x4008AE89),
        ("KVM_GET_FPU", 0x81A0AE8C),
        ("KVM_SET_FPU", 0x41A0AE8D),
        ("KVM_GET_LAPIC", 0x8400AE8E),
        ("KVM_SET_LAPIC", 0x4400AE8F),
        ("KVM_SET_CPUID2", 0x4008AE90),
        ("KVM_GET_CPUID2", 0xC008AE91),
        ("KVM_GET_MP_STATE", 0x8004AE98),
        ("KVM_SET_MP_STATE", 0x4004AE99),
        ("KVM_NMI", 0xAE9A),
        ("KVM_GET_VCPU_EVENTS", 0x8040AE9F),
        ("KVM_SET_VCPU_EVENTS", 0x4040AEA0),
        ("KVM_GET_DEBUGREGS", 0x8080AEA1),
        ("KVM_SET_DEBUGREGS", 0x4080AEA2),
        ("KVM_GET_XSAVE", 0x9000AEA4),
        ("KVM_SET_XSAVE", 0x5000AEA5),
        ("KVM_GET_XCRS", 0x8188AEA6),
        ("KVM_SET_XCRS", 0x4188AEA7),
    ],
)
def test_ioctl_number_matches_kernel_header(name: str, value: int) -> None:
    assert getattr(k, name) == value, f"{name} = {getattr(k, name):#x}, kernel says {value:#x}"


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (s.kvm_regs, 144),
        (s.kvm_segment, 24),
        (s.kvm_dtable, 16),
        (s.kvm_sregs, 312),
        (s.kvm_fpu, 416),
        (s.kvm_msr_entry, 16),
        (s.kvm_cpuid_entry2, 40),
        (s.kvm_userspace_memory_region, 32),
        (s.kvm_pit_config, 64),
        (s.kvm_irq_level, 8),
        (s.kvm_lapic_state, 1024),
        (s.kvm_vcpu_events, 64),
        (s.kvm_xcrs, 392),
        (s.kvm_xsave, 4096),
        (s.kvm_irqchip, 520),
        (s.kvm_pit_state2, 112),
        (s.kvm_clock_data, 48),
        (s.kvm_dirty_log, 16),
        (s.kvm_ioeventfd, 64),
        (s.kvm_irqfd, 32),
        (s.kvm_msi, 32),
        (s.kvm_irq_routing_entry, 48),
        (s.kvm_debugregs, 128),
        (s.kvm_run, 2352),
    ],
)
def test_struct_size_matches_kernel(cls: type, size: int) -> None:
    assert ctypes.sizeof(cls) == size


def test_kvm_run_field_offsets() -> None:
    # Documentation/virt/kvm/api.rst: exit_reason at 8, the exit union at 32, s.regs at 304.
    assert s.kvm_run.exit_reason.offset == 8
    assert s.kvm_run.immediate_exit.offset == 1
    assert s.kvm_run.exit.offset == 32
    assert s.kvm_run.kvm_valid_regs.offset == 288
    assert s.kvm_run.s.offset == 304
    assert s.kvm_vcpu_events.exception_payload.offset == 56


def test_flexible_arrays_grow_by_entry_size() -> None:
    assert ctypes.sizeof(s.cpuid2_with(3)) == 8 + 3 * 40
    assert ctypes.sizeof(s.msrs_with(2)) == 8 + 2 * 16
    assert ctypes.sizeof(s.irq_routing_with(24)) == 8 + 24 * 48


def test_kvm_error_names_operation_and_errno() -> None:
    err = KvmError("KVM_CREATE_VM", 12)
    assert err.op == "KVM_CREATE_VM" and err.errno == 12
    assert str(err).startswith("KVM_CREATE_VM: Cannot allocate memory")
    assert err.exit_code == 1
    assert "KVM_CAP_PIT2" in str(MissingCapability("KVM_CAP_PIT2"))


def test_capability_names_cover_constants() -> None:
    assert k.CAPABILITY_NAMES[k.KVM_CAP_IMMEDIATE_EXIT] == "KVM_CAP_IMMEDIATE_EXIT"
    assert k.CAPABILITY_NAMES[33] == "KVM_CAP_PIT2"
