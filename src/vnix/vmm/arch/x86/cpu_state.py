"""Plain descriptions of x86 CPU state that the boot code produces and the vCPU code loads.

The boot loaders (``bzimage``, ``pvh``) and the CPUID/MSR policy describe what a vCPU must look
like at its first instruction with these classes (plain :mod:`vnix.vmm.record` classes, not
dataclasses: this module is on the VMM's start path); ``vnix.vmm.vcpu`` turns them into KVM
structs through ``vnix.kvm``. Keeping them free of ctypes lets the boot protocol be unit-tested
without /dev/kvm.
"""
from __future__ import annotations

from vnix.vmm.record import FrozenRecord, Record, _set


class Segment(FrozenRecord):
    """A segment register as KVM's ``struct kvm_segment`` describes it."""

    __slots__ = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")
    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 - the kernel's name
    g: int
    avl: int
    unusable: int

    def __init__(self, base: int = 0, limit: int = 0xFFFFFFFF, selector: int = 0, type: int = 0,  # noqa: A002
                 present: int = 1, dpl: int = 0, db: int = 0, s: int = 1, l: int = 0,  # noqa: E741
                 g: int = 1, avl: int = 0, unusable: int = 0) -> None:
        _set(self, "base", base)
        _set(self, "limit", limit)
        _set(self, "selector", selector)
        _set(self, "type", type)
        _set(self, "present", present)
        _set(self, "dpl", dpl)
        _set(self, "db", db)
        _set(self, "s", s)
        _set(self, "l", l)
        _set(self, "g", g)
        _set(self, "avl", avl)
        _set(self, "unusable", unusable)


class DescriptorTable(FrozenRecord):
    __slots__ = ("base", "limit")
    base: int
    limit: int

    def __init__(self, base: int = 0, limit: int = 0) -> None:
        _set(self, "base", base)
        _set(self, "limit", limit)


class BootCpuState(Record):
    """Registers of the boot vCPU at the kernel's entry point.

    General registers not named here are zero. ``rflags`` bit 1 is always set by the loader.
    """

    __slots__ = ("rip", "rsp", "rsi", "rbx", "rflags", "cr0", "cr3", "cr4", "efer",
                 "cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt", "gdt", "idt", "cmdline")

    def __init__(self, rip: int, rsp: int = 0, rsi: int = 0, rbx: int = 0, rflags: int = 0x2, cr0: int = 0,
                 cr3: int = 0, cr4: int = 0, efer: int = 0, cs: Segment | None = None, ds: Segment | None = None,
                 es: Segment | None = None, fs: Segment | None = None, gs: Segment | None = None,
                 ss: Segment | None = None, tr: Segment | None = None, ldt: Segment | None = None,
                 gdt: DescriptorTable | None = None, idt: DescriptorTable | None = None, cmdline: str = "") -> None:
        self.rip = rip
        self.rsp = rsp
        self.rsi = rsi  # Linux 64-bit boot protocol: address of boot_params
        self.rbx = rbx  # PVH: address of hvm_start_info
        self.rflags = rflags
        self.cr0 = cr0
        self.cr3 = cr3
        self.cr4 = cr4
        self.efer = efer
        self.cs: Segment = cs or Segment()
        self.ds: Segment = ds or Segment()
        self.es: Segment = es or Segment()
        self.fs: Segment = fs or Segment()
        self.gs: Segment = gs or Segment()
        self.ss: Segment = ss or Segment()
        self.tr: Segment = tr or Segment()
        self.ldt: Segment = ldt or Segment()
        self.gdt: DescriptorTable = gdt or DescriptorTable()
        self.idt: DescriptorTable = idt or DescriptorTable()
        self.cmdline = cmdline  # not a register: the command line the loader actually gave the kernel


class CpuidEntry(FrozenRecord):
    """One leaf of CPUID as KVM's ``struct kvm_cpuid_entry2`` carries it."""

    __slots__ = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
    function: int
    index: int
    flags: int  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
    eax: int
    ebx: int
    ecx: int
    edx: int

    def __init__(self, function: int, index: int = 0, flags: int = 0, eax: int = 0, ebx: int = 0, ecx: int = 0,
                 edx: int = 0) -> None:
        _set(self, "function", function)
        _set(self, "index", index)
        _set(self, "flags", flags)
        _set(self, "eax", eax)
        _set(self, "ebx", ebx)
        _set(self, "ecx", ecx)
        _set(self, "edx", edx)


class MsrEntry(FrozenRecord):
    __slots__ = ("index", "value")
    index: int
    value: int

    def __init__(self, index: int, value: int) -> None:
        _set(self, "index", index)
        _set(self, "value", value)
