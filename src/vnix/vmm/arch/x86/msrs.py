"""MSR values of a vCPU at boot, as Firecracker's ``create_boot_msr_entries`` sets them.

MSR numbers from the Intel SDM vol. 4, "Model-Specific Registers". The SYSCALL/SYSENTER MSRs
and KERNEL_GS_BASE start at zero (the kernel programs them), the TSC starts at 0,
IA32_MISC_ENABLE has fast string operations on (bit 0) and the MTRR default type is
write-back with MTRRs enabled (0x806: E = bit 11, type 6 = WB), so guest memory is cacheable
before the kernel touches the MTRRs.
"""
from __future__ import annotations

from vnix.vmm.arch.x86.cpu_state import MsrEntry

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102

MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_MEM_TYPE_WB = 0x6


def boot_msrs() -> list[MsrEntry]:
    """The MSRs to set (KVM_SET_MSRS) on every vCPU before it first runs."""
    return [
        MsrEntry(MSR_IA32_SYSENTER_CS, 0),
        MsrEntry(MSR_IA32_SYSENTER_ESP, 0),
        MsrEntry(MSR_IA32_SYSENTER_EIP, 0),
        MsrEntry(MSR_STAR, 0),
        MsrEntry(MSR_CSTAR, 0),
        MsrEntry(MSR_KERNEL_GS_BASE, 0),
        MsrEntry(MSR_SYSCALL_MASK, 0),
        MsrEntry(MSR_LSTAR, 0),
        MsrEntry(MSR_IA32_TSC, 0),
        MsrEntry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        MsrEntry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
