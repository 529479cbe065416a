"""Plain descriptions of x86 CPU state that the boot code produces and the vCPU code loads.

The boot loaders (``bzimage``, ``pvh``) and the CPUID/MSR policy describe what a vCPU must look
like at its first instruction with these dataclasses; ``vnix.vmm.vcpu`` turns them into KVM
structs through ``vnix.kvm``. Keeping them free of ctypes lets the boot protocol be unit-tested
without /dev/kvm.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A segment register as KVM's ``struct kvm_segment`` describes it."""

    base: int = 0
    limit: int = 0xFFFFFFFF
    selector: int = 0
    type: int = 0
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - the kernel's name
    g: int = 1
    avl: int = 0
    unusable: int = 0


@dataclass(frozen=True)
class DescriptorTable:
    base: int = 0
    limit: int = 0


@dataclass
class BootCpuState:
    """Registers of the boot vCPU at the kernel's entry point.

    General registers not named here are zero. ``rflags`` bit 1 is always set by the loader.
    """

    rip: int
    rsp: int = 0
    rsi: int = 0  # Linux 64-bit boot protocol: address of boot_params
    rbx: int = 0  # PVH: address of hvm_start_info
    rflags: int = 0x2
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    ldt: Segment = field(default_factory=Segment)
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cmdline: str = ""  # not a register: the command line the loader actually gave the kernel


@dataclass(frozen=True)
class CpuidEntry:
    """One leaf of CPUID as KVM's ``struct kvm_cpuid_entry2`` carries it."""

    function: int
    index: int = 0
    flags: int = 0  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


@dataclass(frozen=True)
class MsrEntry:
    index: int
    value: int
