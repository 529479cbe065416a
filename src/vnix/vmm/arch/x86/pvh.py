"""The PVH boot ABI's ``struct hvm_start_info`` (xen/include/public/arch-x86/hvm/start_info.h).

::

    hvm_start_info (56 bytes, at PVH_INFO_ADDR; ebx points here at entry)
    0   u32 magic = 0x336ec578      4  u32 version = 1       8  u32 flags = 0
    12  u32 nr_modules              16 u64 modlist_paddr     24 u64 cmdline_paddr
    32  u64 rsdp_paddr              40 u64 memmap_paddr      48 u32 memmap_entries
    52  u32 reserved = 0

    hvm_modlist_entry (32 bytes): u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved
    hvm_memmap_table_entry (24 bytes): u64 addr, u64 size, u32 type, u32 reserved
      (types are the e820 ones: XEN_HVM_MEMMAP_TYPE_RAM = 1, _RESERVED = 2, _ACPI = 3, ...)

QEMU's PVH option ROM fills the same fields: cmdline, one module for the initrd (no module
cmdline), the e820 table as memmap, and the RSDP it found.
"""
from __future__ import annotations

import struct

from vnix.vmm.arch.x86.layout import (
    PVH_INFO_ADDR,
    PVH_MEMMAP_ADDR,
    PVH_MEMMAP_MAX_ENTRIES,
    PVH_MODLIST_ADDR,
    E820Entry,
)
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import FrozenRecord, _set

XEN_HVM_START_MAGIC_VALUE = 0x336EC578
START_INFO_FMT = "<IIIIQQQQII"
MODLIST_FMT = "<QQQQ"
MEMMAP_FMT = "<QQII"


class StartInfo(FrozenRecord):
    __slots__ = ("magic", "version", "flags", "nr_modules", "modlist_paddr", "cmdline_paddr", "rsdp_paddr", "memmap_paddr", "memmap_entries")
    magic: int
    version: int
    flags: int
    nr_modules: int
    modlist_paddr: int
    cmdline_paddr: int
    rsdp_paddr: int
    memmap_paddr: int
    memmap_entries: int

    def __init__(self, magic: int, version: int, flags: int, nr_modules: int, modlist_paddr: int, cmdline_paddr: int, rsdp_paddr: int, memmap_paddr: int, memmap_entries: int) -> None:
        _set(self, "magic", magic)
        _set(self, "version", version)
        _set(self, "flags", flags)
        _set(self, "nr_modules", nr_modules)
        _set(self, "modlist_paddr", modlist_paddr)
        _set(self, "cmdline_paddr", cmdline_paddr)
        _set(self, "rsdp_paddr", rsdp_paddr)
        _set(self, "memmap_paddr", memmap_paddr)
        _set(self, "memmap_entries", memmap_entries)

    @classmethod
    def read(cls, mem: GuestMemory, addr: int = PVH_INFO_ADDR) -> StartInfo:
        raw = struct.unpack(START_INFO_FMT, mem.read(addr, struct.calcsize(START_INFO_FMT)))
        return cls(*raw[:9])

    def modules(self, mem: GuestMemory) -> list[tuple[int, int]]:
        """(paddr, size) of each module."""
        out = []
        for i in range(self.nr_modules):
            paddr, size, _cmd, _res = struct.unpack(
                MODLIST_FMT, mem.read(self.modlist_paddr + 32 * i, 32))
            out.append((paddr, size))
        return out

    def memmap(self, mem: GuestMemory) -> list[E820Entry]:
        out = []
        for i in range(self.memmap_entries):
            addr, size, typ, _res = struct.unpack(
                MEMMAP_FMT, mem.read(self.memmap_paddr + 24 * i, 24))
            out.append(E820Entry(addr, size, typ))
        return out


def write_start_info(mem: GuestMemory, *, cmdline_addr: int, initrd: tuple[int, int] | None,
                     memmap: list[E820Entry], rsdp_addr: int) -> int:
    """Write start_info, its modlist and memmap; return start_info's address (for ebx)."""
    if len(memmap) > PVH_MEMMAP_MAX_ENTRIES:
        raise ValueError("too many memmap entries for the PVH area")
    nr_modules = 0
    if initrd is not None:
        mem.write(PVH_MODLIST_ADDR, struct.pack(MODLIST_FMT, initrd[0], initrd[1], 0, 0))
        nr_modules = 1
    for i, e in enumerate(memmap):
        mem.write(PVH_MEMMAP_ADDR + 24 * i, struct.pack(MEMMAP_FMT, e.addr, e.size, e.type, 0))
    mem.write(PVH_INFO_ADDR, struct.pack(
        START_INFO_FMT,
        XEN_HVM_START_MAGIC_VALUE,
        1,  # version 1: memmap fields present
        0,  # flags
        nr_modules,
        PVH_MODLIST_ADDR if nr_modules else 0,
        cmdline_addr,
        rsdp_addr,
        PVH_MEMMAP_ADDR,
        len(memmap),
        0,
    ))
    return PVH_INFO_ADDR
