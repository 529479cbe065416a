"""GDT descriptors <-> :class:`Segment`, and the two boot GDTs vnix uses.

A segment descriptor (Intel SDM vol. 3A, 3.4.5 "Segment Descriptors") packs, in 64 bits::

    63..56 base[31:24]   55 G  54 D/B  53 L  52 AVL  51..48 limit[19:16]
    47 P  46..45 DPL  44 S  43..40 type   39..16 base[23:0]   15..0 limit[15:0]

With G=1 the 20-bit limit counts 4 KiB pages, so ``Segment.limit`` (bytes, as KVM's
``struct kvm_segment`` has it) is ``(limit << 12) | 0xfff``.

Boot GDTs:

* 64-bit Linux entry (boot.rst, "64-bit BOOT PROTOCOL"): __BOOT_CS = 0x10 (64-bit code),
  __BOOT_DS = 0x18 (data), then a TSS at 0x20 (16 bytes in long mode).
* 32-bit PVH entry (xen docs/misc/pvh.pandoc): flat 4 GiB 32-bit code at 0x08, data at 0x10 and
  a 32-bit TSS at 0x18 (base 0, limit 0x67), as Firecracker lays it out.
"""
from __future__ import annotations

from vnix.vmm.arch.x86.cpu_state import DescriptorTable, Segment
from vnix.vmm.arch.x86.layout import BOOT_GDT_ADDR, BOOT_GDT_MAX_ENTRIES, BOOT_IDT_ADDR
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import FrozenRecord, _set

# descriptor types (SDM 3.4.5.1 / 3.5): code execute/read accessed, data read/write accessed,
# busy TSS (32/64-bit), LDT
TYPE_CODE_XRA = 0xB
TYPE_DATA_RWA = 0x3
TYPE_TSS_BUSY = 0xB
TYPE_LDT = 0x2


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """Firecracker/QEMU-style helper: ``flags`` is the 16 bits (G, D/B, L, AVL in the high
    nibble of byte 6, P/DPL/S/type in byte 5) written as 0xGDLA_PDST-ish, e.g. 0xa09b."""
    return (
        ((base & 0xFF000000) << 32)
        | ((flags & 0xF0FF) << 40)
        | ((limit & 0xF0000) << 32)
        | ((base & 0x00FFFFFF) << 16)
        | (limit & 0xFFFF)
    )


def encode_segment(seg: Segment) -> int:
    """The 8-byte descriptor for ``seg`` (the inverse of :func:`segment_from_entry`)."""
    limit = seg.limit >> 12 if seg.g else seg.limit
    if limit > 0xFFFFF:
        raise ValueError(f"segment limit {seg.limit:#x} does not fit without G=1")
    flags = (
        (seg.g << 15) | (seg.db << 14) | (seg.l << 13) | (seg.avl << 12)
        | (seg.present << 7) | (seg.dpl << 5) | (seg.s << 4) | seg.type
    )
    return gdt_entry(flags, seg.base, limit)


def segment_from_entry(entry: int, index: int) -> Segment:
    """The :class:`Segment` a CPU would load from GDT slot ``index`` holding ``entry``."""
    base = ((entry >> 16) & 0xFFFFFF) | (((entry >> 56) & 0xFF) << 24)
    raw_limit = (entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16)
    g = (entry >> 55) & 1
    present = (entry >> 47) & 1
    return Segment(
        base=base,
        limit=(raw_limit << 12) | 0xFFF if g else raw_limit,
        selector=index * 8,
        type=(entry >> 40) & 0xF,
        present=present,
        dpl=(entry >> 45) & 3,
        db=(entry >> 54) & 1,
        s=(entry >> 44) & 1,
        l=(entry >> 53) & 1,
        g=g,
        avl=(entry >> 52) & 1,
        unusable=0 if present else 1,
    )


class BootSegments(FrozenRecord):
    """What a boot GDT gives the vCPU: table registers and the segment registers to load."""

    __slots__ = ("gdt", "idt", "code", "data", "tss", "ldt")
    gdt: DescriptorTable
    idt: DescriptorTable
    code: Segment
    data: Segment
    tss: Segment
    ldt: Segment

    def __init__(self, gdt: DescriptorTable, idt: DescriptorTable, code: Segment, data: Segment, tss: Segment, ldt: Segment) -> None:
        _set(self, "gdt", gdt)
        _set(self, "idt", idt)
        _set(self, "code", code)
        _set(self, "data", data)
        _set(self, "tss", tss)
        _set(self, "ldt", ldt)


def _write(mem: GuestMemory, entries: list[int]) -> tuple[DescriptorTable, DescriptorTable]:
    if len(entries) > BOOT_GDT_MAX_ENTRIES:
        raise ValueError("boot GDT too large")
    for i, entry in enumerate(entries):
        mem.write_u64(BOOT_GDT_ADDR + 8 * i, entry)
    mem.write_u64(BOOT_IDT_ADDR, 0)
    return (DescriptorTable(BOOT_GDT_ADDR, 8 * len(entries) - 1),
            DescriptorTable(BOOT_IDT_ADDR, 7))


# The LDTR at reset: selector 0, present, type LDT (what KVM puts there on vCPU reset).
_RESET_LDT = Segment(base=0, limit=0xFFFF, selector=0, type=TYPE_LDT, s=0, g=0)


def write_long_mode_gdt(mem: GuestMemory) -> BootSegments:
    """GDT for the 64-bit Linux entry: code 0x10, data 0x18, TSS 0x20 (16-byte descriptor)."""
    entries = [
        0,
        0,
        gdt_entry(0xA09B, 0, 0xFFFFF),  # 0x10 __BOOT_CS: 64-bit code (L=1), G=1
        gdt_entry(0xC093, 0, 0xFFFFF),  # 0x18 __BOOT_DS: 32-bit data, flat 4 GiB
        gdt_entry(0x008B, 0, 0x67),  # 0x20 busy 64-bit TSS, limit 0x67 ...
        0,  # ... whose upper half (base[63:32]) is zero
    ]
    gdt, idt = _write(mem, entries)
    return BootSegments(gdt, idt, segment_from_entry(entries[2], 2),
                        segment_from_entry(entries[3], 3), segment_from_entry(entries[4], 4),
                        _RESET_LDT)


def write_protected_mode_gdt(mem: GuestMemory) -> BootSegments:
    """GDT for the 32-bit PVH entry: flat code 0x08, flat data 0x10, 32-bit TSS 0x18."""
    entries = [
        0,
        gdt_entry(0xC09B, 0, 0xFFFFF),  # 0x08 32-bit code, base 0, limit 4 GiB
        gdt_entry(0xC093, 0, 0xFFFFF),  # 0x10 32-bit data, base 0, limit 4 GiB
        gdt_entry(0x008B, 0, 0x67),  # 0x18 busy 32-bit TSS, base 0, limit 0x67 (pvh.pandoc)
    ]
    gdt, idt = _write(mem, entries)
    return BootSegments(gdt, idt, segment_from_entry(entries[1], 1),
                        segment_from_entry(entries[2], 2), segment_from_entry(entries[3], 3),
                        _RESET_LDT)
