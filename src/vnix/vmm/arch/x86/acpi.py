"""ACPI tables for a hardware-reduced vnix machine: RSDP, XSDT, FADT, DSDT, MADT.

From the ACPI 6.4 specification (chapter 5):

* RSDP (5.2.5.3), revision 2, 36 bytes: "RSD PTR ", checksum over the first 20 bytes, OEMID,
  revision, RsdtAddress (0: we give only the XSDT), length, XsdtAddress, extended checksum
  over all 36 bytes. At ACPI_RSDP_ADDR (0xE0000) where Linux's BIOS-area scan finds it; also
  handed over as boot_params.acpi_rsdp_addr and hvm_start_info.rsdp_paddr.
* Every other table starts with the 36-byte System Description Table Header (5.2.6):
  signature, length, revision, checksum (whole table sums to 0 mod 256), OEMID, OEM table ID,
  OEM revision, creator ID, creator revision.
* FADT revision 6 (5.2.9, 276 bytes) with HW_REDUCED_ACPI: no PM1/GPE blocks, no SCI; poweroff
  and reset go through the registers below, all in system I/O space:

      SLEEP_CONTROL_REG  port 0x600, 8 bits: the guest writes (SLP_TYP << 2) | SLP_EN (0x20);
                         S5 (poweroff) has SLP_TYP 5 (from \\_S5), i.e. the byte 0x34
      SLEEP_STATUS_REG   port 0x601, 8 bits: WAK_STS is bit 7
      RESET_REG          port 0x602, 8 bits, RESET_VALUE 1 (FADT flag RESET_REG_SUP)

* MADT (5.2.12): LAPIC at 0xFEE00000, PCAT_COMPAT; one enabled Processor Local APIC per vCPU
  (UIDs and APIC IDs 0..N-1), the IOAPIC (ID = N, GSI base 0), an interrupt source override
  ISA IRQ 0 -> GSI 2 (as QEMU), and a Local APIC NMI on LINT1 for all processors.
* DSDT: \\_S5 = Package {5, 0, 0, 0}; \\_SB.PVPN pvpanic (_HID "QEMU0001", I/O port 0x505);
  \\_SB.COM1 (PNP0501, ports 0x3F8-0x3FF, IRQ 4); one LNRO0005 device per virtio-mmio
  window given (Linux's virtio_mmio driver binds to that _HID); and \\_SB.PCI0, the PCI root
  bridge (PNP0A03, 6.1.5 / PCI Firmware 3.2, 4.1) whose _CRS gives bus 0, the configuration
  ports 0xCF8-0xCFF, the I/O windows around them and the 32-bit MMIO window where the VMM and
  the guest place BARs (0xC0000000..0xFEBFFFFF): without it Linux needs ``pci=noacpi``.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

from vnix.vmm.arch.x86 import aml
from vnix.vmm.arch.x86.layout import (
    ACPI_RSDP_ADDR,
    ACPI_TABLES_ADDR,
    ACPI_TABLES_END,
    IOAPIC_ADDR,
    LAPIC_ADDR,
    PIT_IOAPIC_PIN,
)
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import FrozenRecord, _set

OEM_ID = b"VNIX  "  # 6 bytes
OEM_TABLE_ID = b"VNIXVMM "  # 8 bytes
CREATOR_ID = b"VNIX"
SLEEP_CONTROL_PORT = 0x600
SLEEP_STATUS_PORT = 0x601
RESET_PORT = 0x602
RESET_VALUE = 1
SLP_EN = 0x20
S5_SLP_TYP = 5
S5_POWEROFF_BYTE = (S5_SLP_TYP << 2) | SLP_EN  # what a guest writes to port 0x600 to power off
PVPANIC_PORT = 0x505
COM1_PORT = 0x3F8
COM1_IRQ = 4

FADT_REVISION = 6
FADT_MINOR_REVISION = 0
FADT_LENGTH = 276
FADT_F_WBINVD = 1 << 0
FADT_F_RESET_REG_SUP = 1 << 10
FADT_F_HW_REDUCED_ACPI = 1 << 20
IAPC_BOOT_ARCH_LEGACY_DEVICES = 1 << 0
IAPC_BOOT_ARCH_8042 = 1 << 1
IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2
IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5
GAS_SYSTEM_IO = 1
MADT_PCAT_COMPAT = 1
MADT_LAPIC_ENABLED = 1


class AcpiMmioDevice(FrozenRecord):
    """A virtio-mmio window to describe in the DSDT (Linux: _HID "LNRO0005")."""

    __slots__ = ("base", "size", "gsi")
    base: int
    size: int
    gsi: int

    def __init__(self, base: int, size: int, gsi: int) -> None:
        _set(self, "base", base)
        _set(self, "size", size)
        _set(self, "gsi", gsi)


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to 0 mod 256 (with that byte counted as 0)."""
    return (-sum(data)) & 0xFF


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    header = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                                   OEM_TABLE_ID, 1, CREATOR_ID, 1))
    table = header + body
    table[9] = checksum(table)
    return bytes(table)


def gas(address: int, *, bit_width: int = 8, access_size: int = 1,
        space: int = GAS_SYSTEM_IO) -> bytes:
    """Generic Address Structure (5.2.3.2): space, bit width, bit offset, access size, address.
    access_size 1 = byte access."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def rsdp(xsdt_addr: int) -> bytes:
    raw = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr,
                                0, b"\0\0\0"))
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


def xsdt(table_addrs: Sequence[int]) -> bytes:
    return _sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in table_addrs))


def fadt(dsdt_addr: int, *, i8042: bool = False) -> bytes:
    body = bytearray(FADT_LENGTH - 36)

    def put(fmt: str, offset: int, *values: int | bytes) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put("<I", 40, dsdt_addr)  # DSDT (32-bit)
    boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT | (IAPC_BOOT_ARCH_8042 if i8042 else 0)
    put("<H", 109, boot_arch)  # IAPC_BOOT_ARCH
    put("<I", 112, FADT_F_WBINVD | FADT_F_RESET_REG_SUP | FADT_F_HW_REDUCED_ACPI)
    put("<12s", 116, gas(RESET_PORT))  # RESET_REG
    put("<B", 128, RESET_VALUE)
    put("<B", 131, FADT_MINOR_REVISION)
    put("<Q", 140, dsdt_addr)  # X_DSDT
    put("<12s", 244, gas(SLEEP_CONTROL_PORT))  # SLEEP_CONTROL_REG
    put("<12s", 256, gas(SLEEP_STATUS_PORT))  # SLEEP_STATUS_REG
    put("<8s", 268, b"VNIXVNIX")  # Hypervisor Vendor Identity
    return _sdt(b"FACP", FADT_REVISION, bytes(body))


def madt(nr_vcpus: int) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDR, MADT_PCAT_COMPAT))
    for cpu in range(nr_vcpus):
        # type 0 Processor Local APIC: length 8, ACPI processor UID, APIC ID, flags
        body += struct.pack("<BBBBI", 0, 8, cpu, cpu, MADT_LAPIC_ENABLED)
    # type 1 I/O APIC: length 12, IOAPIC ID, reserved, address, GSI base
    body += struct.pack("<BBBBII", 1, 12, ioapic_id(nr_vcpus), 0, IOAPIC_ADDR, 0)
    # type 2 Interrupt Source Override: length 10, bus 0 (ISA), source IRQ 0, GSI 2, flags 0
    # (conforms to the bus: edge, active high)
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, PIT_IOAPIC_PIN, 0)
    # type 4 Local APIC NMI: length 6, UID 0xFF = all processors, flags 0, LINT1
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)
    return _sdt(b"APIC", 5, bytes(body))


def ioapic_id(nr_vcpus: int) -> int:
    """The IOAPIC's ID in the MADT and the MP table: the first ID after the vCPUs'."""
    return nr_vcpus


def dsdt_aml(devices: Sequence[AcpiMmioDevice] = ()) -> bytes:
    sb = [
        aml.device(
            "PVPN",
            aml.name("_HID", "QEMU0001"),
            aml.name("_CRS", aml.resource_template(aml.io_port(PVPANIC_PORT, 1))),
        ),
        aml.device(
            "COM1",
            aml.name("_HID", aml.eisa_id("PNP0501")),
            aml.name("_UID", 1),
            aml.name("_CRS", aml.resource_template(aml.io_port(COM1_PORT, 8),
                                                   aml.irq_no_flags(COM1_IRQ))),
        ),
    ]
    sb.append(pci_root_bridge())
    for i, dev in enumerate(devices):
        sb.append(aml.device(
            f"V{i:03X}",
            aml.name("_HID", "LNRO0005"),
            aml.name("_UID", i),
            aml.name("_CRS", aml.resource_template(
                aml.memory32_fixed(dev.base, dev.size),
                aml.extended_interrupt(dev.gsi))),
        ))
    return (aml.name("\\_S5", aml.package(S5_SLP_TYP, 0, 0, 0))
            + aml.scope("\\_SB", *sb))


PCI_CONFIG_PORT = 0xCF8  # configuration mechanism 1: CONFIG_ADDRESS 0xCF8, CONFIG_DATA 0xCFC


def pci_root_bridge() -> bytes:
    """\\_SB.PCI0: bus 0 behind the host bridge the VMM emulates (vnix.vmm.devices.pci)."""
    from vnix.vmm.arch.x86.layout import DEVICE_MMIO_END, DEVICE_MMIO_START

    return aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_UID", 0),
        aml.name("_SEG", 0),
        aml.name("_BBN", 0),
        aml.name("_CRS", aml.resource_template(
            aml.word_bus_number(0, 0),
            aml.io_port(PCI_CONFIG_PORT, 8),
            aml.word_io(0x0000, PCI_CONFIG_PORT - 1),
            aml.word_io(0x0D00, 0xFFFF),
            aml.dword_memory(DEVICE_MMIO_START, DEVICE_MMIO_END - 1))),
    )


def dsdt(devices: Sequence[AcpiMmioDevice] = ()) -> bytes:
    return _sdt(b"DSDT", 2, dsdt_aml(devices))


def _align(addr: int, to: int = 16) -> int:
    return (addr + to - 1) & ~(to - 1)


def write_acpi_tables(mem: GuestMemory, nr_vcpus: int, *,
                      devices: Sequence[AcpiMmioDevice] = (), i8042: bool = False) -> int:
    """Write RSDP, XSDT, FADT, DSDT and MADT into 0xE0000..0xFFFFF; return the RSDP address."""
    if not 1 <= nr_vcpus <= 254:
        raise ValueError(f"{nr_vcpus} vCPUs do not fit the MADT's 8-bit APIC IDs")
    addr = ACPI_TABLES_ADDR
    dsdt_addr = addr
    dsdt_raw = dsdt(devices)
    addr = _align(addr + len(dsdt_raw))
    fadt_addr = addr
    fadt_raw = fadt(dsdt_addr, i8042=i8042)
    addr = _align(addr + len(fadt_raw))
    madt_addr = addr
    madt_raw = madt(nr_vcpus)
    addr = _align(addr + len(madt_raw))
    xsdt_addr = addr
    xsdt_raw = xsdt([fadt_addr, madt_addr])
    if xsdt_addr + len(xsdt_raw) > ACPI_TABLES_END:
        raise ValueError("ACPI tables do not fit below 1 MiB")
    for at, raw in ((dsdt_addr, dsdt_raw), (fadt_addr, fadt_raw), (madt_addr, madt_raw),
                    (xsdt_addr, xsdt_raw)):
        mem.write(at, raw)
    mem.write(ACPI_RSDP_ADDR, rsdp(xsdt_addr))
    return ACPI_RSDP_ADDR
