"""The Intel MultiProcessor Specification 1.4 table, for guests that ignore ACPI (acpi=off).

Chapter 4 of the MP spec ("MP Configuration Table")::

    MP floating pointer (16 bytes, 16-byte aligned, at MPTABLE_ADDR = 0x9fc00 which Linux scans
    as "the last KB of base memory"):
      0 "_MP_"  4 u32 config table address  8 u8 length (16-byte units) = 1
      9 u8 spec revision = 4  10 u8 checksum  11 u8 feature1 = 0 (a config table follows)
      12 u8 feature2 (bit 7 IMCR present) = 0  13..15 reserved

    configuration table header (44 bytes):
      0 "PCMP"  4 u16 base table length  6 u8 spec revision = 4  7 u8 checksum
      8 OEM ID (8)  16 product ID (12)  28 u32 OEM table ptr  32 u16 OEM table size
      34 u16 entry count  36 u32 local APIC address  40 u16 extended length  42 u8 ext checksum
      43 reserved

    entries: processor (type 0, 20 bytes) one per vCPU, bus (1, 8 bytes) "ISA   ",
    I/O APIC (2, 8 bytes), I/O interrupt assignment (3, 8 bytes) for ISA IRQs 0-15,
    local interrupt assignment (4, 8 bytes): ExtINT on LINT0 and NMI on LINT1.

Both checksums make their structure sum to 0 mod 256. ISA IRQ 0 goes to IOAPIC pin 2 like
the MADT's interrupt source override (see ``layout.ioapic_pin_for_isa_irq``).
"""
from __future__ import annotations

import struct

from vnix.vmm.arch.x86.acpi import checksum, ioapic_id
from vnix.vmm.arch.x86.layout import (
    IOAPIC_ADDR,
    LAPIC_ADDR,
    MPTABLE_ADDR,
    MPTABLE_MAX_SIZE,
    ioapic_pin_for_isa_irq,
)
from vnix.vmm.memory import GuestMemory

MP_SPEC_REV = 4
APIC_VERSION = 0x14  # an integrated local APIC (what KVM's in-kernel LAPIC reports)
IOAPIC_VERSION = 0x11
CPU_ENABLED = 1
CPU_BSP = 2
CPU_SIGNATURE = 0x600  # family 6
CPU_FEATURES = (1 << 0) | (1 << 9)  # FPU, APIC
BUS_ISA_ID = 0
MP_INT = 0  # vectored interrupt from the IOAPIC
MP_NMI = 1
MP_EXTINT = 3
MP_IRQ_DEFAULT = 0  # polarity/trigger "conforms to the bus"
ALL_LAPICS = 0xFF


def build_mptable(nr_vcpus: int, base: int = MPTABLE_ADDR) -> bytes:
    """Floating pointer followed by the configuration table, ready to write at ``base``."""
    if nr_vcpus < 1:
        raise ValueError("an MP table needs at least one processor")
    ioapic = ioapic_id(nr_vcpus)
    entries: list[bytes] = []
    for cpu in range(nr_vcpus):
        flags = CPU_ENABLED | (CPU_BSP if cpu == 0 else 0)
        entries.append(struct.pack("<BBBBII8x", 0, cpu, APIC_VERSION, flags, CPU_SIGNATURE,
                                   CPU_FEATURES))
    entries.append(struct.pack("<BB6s", 1, BUS_ISA_ID, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, ioapic, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    for irq in range(16):
        entries.append(struct.pack("<BBHBBBB", 3, MP_INT, MP_IRQ_DEFAULT, BUS_ISA_ID, irq,
                                   ioapic, ioapic_pin_for_isa_irq(irq)))
    entries.append(struct.pack("<BBHBBBB", 4, MP_EXTINT, MP_IRQ_DEFAULT, BUS_ISA_ID, 0,
                               ALL_LAPICS, 0))
    entries.append(struct.pack("<BBHBBBB", 4, MP_NMI, MP_IRQ_DEFAULT, BUS_ISA_ID, 0,
                               ALL_LAPICS, 1))
    body = b"".join(entries)
    table_addr = base + 16
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), MP_SPEC_REV,
                                   0, b"VNIX    ", b"VNIX VMM    ", 0, 0, len(entries),
                                   LAPIC_ADDR, 0, 0, 0))
    config = header + body
    config[7] = checksum(config)
    floating = bytearray(struct.pack("<4sIBBBB4s", b"_MP_", table_addr, 1, MP_SPEC_REV, 0, 0,
                                     b"\0\0\0\0"))
    floating[10] = checksum(floating)
    return bytes(floating + config)


def write_mptable(mem: GuestMemory, nr_vcpus: int) -> int:
    """Write the MP table at MPTABLE_ADDR; return its address."""
    raw = build_mptable(nr_vcpus)
    if len(raw) > MPTABLE_MAX_SIZE:
        raise ValueError(f"an MP table for {nr_vcpus} vCPUs does not fit in the EBDA")
    mem.write(MPTABLE_ADDR, raw)
    return MPTABLE_ADDR
