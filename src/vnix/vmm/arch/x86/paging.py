"""Identity page tables for entering the kernel in long mode.

The 64-bit Linux boot protocol (boot.rst) wants "paging enabled with an identity mapping for
the range of the loaded kernel, the zero page and the command line"; vnix maps the whole first
4 GiB with 2 MiB pages (SDM vol. 3A, 4.5 "4-level paging": PML4E -> PDPTE -> PDE with PS=1),
which every x86-64 CPU supports (1 GiB pages need pdpe1gb).
"""
from __future__ import annotations

import struct

from vnix.vmm.arch.x86.layout import PD_ADDR, PD_COUNT, PDPT_ADDR, PML4_ADDR
from vnix.vmm.memory import GuestMemory

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7  # in a PDE: maps a 2 MiB page
PAGE_2M = 2 * 1024 * 1024

# Control-register bits the long-mode entry sets (SDM vol. 3A 2.5, and the EFER MSR).
CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10


def write_identity_map(mem: GuestMemory) -> int:
    """Write PML4/PDPT/PDs identity-mapping [0, 4 GiB); return the value for CR3."""
    mem.fill(PML4_ADDR, 4096)
    mem.fill(PDPT_ADDR, 4096)
    mem.write_u64(PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE)
    for d in range(PD_COUNT):
        pd = PD_ADDR + d * 4096
        mem.write_u64(PDPT_ADDR + 8 * d, pd | PTE_PRESENT | PTE_WRITABLE)
        first = d * 512
        table = struct.pack(
            "<512Q",
            *(((first + i) * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE
              for i in range(512)),
        )
        mem.write(pd, table)
    return PML4_ADDR


def translate(mem: GuestMemory, cr3: int, vaddr: int) -> int | None:
    """Walk the 4-level tables at ``cr3`` for ``vaddr`` (2 MiB and 4 KiB leaves); None if not
    mapped. Used by tests and by debugging tools; reads only through GuestMemory."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = mem.read_u64(table + 8 * ((vaddr >> shift) & 0x1FF))
        if not entry & PTE_PRESENT:
            return None
        addr = entry & 0x000FFFFFFFFFF000
        if level in (1, 2) and entry & PTE_PAGE_SIZE:
            size = 1 << shift
            return (addr & ~(size - 1)) | (vaddr & (size - 1))
        table = addr
    return table | (vaddr & 0xFFF)
