"""The guest-physical memory layout of a vnix x86-64 machine: every fixed address in one place.

::

    0x0000_0000  real-mode IVT + BIOS data area (left zero; Linux does not need them)
    0x0000_0500  GDT (BOOT_GDT_ADDR, up to 8 entries), then a null IDT at 0x540
    0x0000_6000  PVH hvm_start_info, modlist at 0x6040, memmap at 0x6100
    0x0000_7000  Linux boot_params ("zero page"), one 4 KiB page
    0x0000_8ff0  initial stack pointer (grows down into 0x8000..0x8ff0)
    0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xefff four page directories (2 MiB pages)
    0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE bytes, NUL terminated)
    0x0009_fc00  EBDA: Intel MP floating pointer + MP configuration table (Firecracker's place)
    0x000a_0000  legacy VGA / option ROM hole (reserved in e820)
    0x000e_0000  ACPI: RSDP (Linux scans 0xE0000..0xFFFFF on 16-byte boundaries), then
                 XSDT, FADT, DSDT, MADT up to 0xFFFFF
    0x0010_0000  kernel load address (bzImage protected-mode part; PVH/vmlinux segments above)
    ...          initrd: highest page-aligned address that fits below
                 min(RAM top below the hole, 4 GiB, initrd_addr_max + 1)
    0xc000_0000  32-bit MMIO hole (3 GiB..4 GiB): device MMIO (virtio-mmio, PCI BARs),
                 IOAPIC 0xFEC00000, LAPIC 0xFEE00000
    0x1_0000_0000 RAM above 4 GiB (what did not fit below 3 GiB)

The e820 map (``e820_map``) and the PVH memmap both come from this module; RAM regions for
:class:`vnix.vmm.memory.GuestMemory` come from ``ram_regions``.
"""
from __future__ import annotations

from vnix.vmm import ConfigError
from vnix.vmm.record import FrozenRecord, _set

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE_SIZE = 4096

# -- low memory: boot structures written by the loader ---------------------------------------
BOOT_GDT_ADDR = 0x500  # Firecracker's BOOT_GDT_OFFSET; 8 entries max
BOOT_GDT_MAX_ENTRIES = 8
BOOT_IDT_ADDR = 0x540  # a null IDT (limit 7) until the kernel loads its own; past the GDT
PVH_INFO_ADDR = 0x6000  # struct hvm_start_info (56 bytes)
PVH_MODLIST_ADDR = 0x6040  # struct hvm_modlist_entry[] (32 bytes each; one for the initrd)
PVH_MEMMAP_ADDR = 0x6100  # struct hvm_memmap_table_entry[] (24 bytes each)
PVH_MEMMAP_MAX_ENTRIES = (0x7000 - PVH_MEMMAP_ADDR) // 24
ZERO_PAGE_ADDR = 0x7000  # Linux struct boot_params, 4 KiB (Firecracker's ZERO_PAGE_START)
BOOT_STACK_POINTER = 0x8FF0  # rsp/rbp at entry (Firecracker's BOOT_STACK_POINTER)
PML4_ADDR = 0x9000  # long-mode identity map: one PML4 page
PDPT_ADDR = 0xA000  # one PDPT page
PD_ADDR = 0xB000  # four page directories (0xb000..0xefff), 2 MiB pages, first 4 GiB
PD_COUNT = 4
CMDLINE_ADDR = 0x20000  # kernel command line (Firecracker's CMDLINE_START)
CMDLINE_MAX_SIZE = 0x10000  # bytes including the NUL; the kernel's cmdline_size may be smaller

# -- firmware area (reserved in e820) --------------------------------------------------------
EBDA_START = 0x9FC00  # 639 KiB: "last KB of base memory", scanned by Linux for the MP table
MPTABLE_ADDR = EBDA_START  # Intel MP spec 1.4 floating pointer + config table
MPTABLE_MAX_SIZE = 0xA0000 - MPTABLE_ADDR  # the 1 KiB up to the VGA hole
ACPI_RSDP_ADDR = 0xE0000  # RSDP; Linux's acpi_find_root_pointer scans 0xE0000..0xFFFFF
ACPI_TABLES_ADDR = 0xE0040  # XSDT, FADT, DSDT, MADT follow the RSDP
ACPI_TABLES_END = 0x100000  # ... and must end below 1 MiB
HIMEM_START = 0x100000  # 1 MiB: end of the reserved low area, start of "high" RAM

# -- the kernel -----------------------------------------------------------------------------
KERNEL_LOAD_ADDR = 0x100000  # bzImage protected-mode code goes at 1 MiB (boot.rst, "LOADED_HIGH")

# -- the 32-bit hole and the interrupt controllers -------------------------------------------
MMIO_HOLE_START = 3 * GiB  # RAM stops here and resumes at 4 GiB
MMIO_HOLE_END = 4 * GiB
DEVICE_MMIO_START = MMIO_HOLE_START  # virtio-mmio windows, PCI BARs: 0xC0000000..IOAPIC
DEVICE_MMIO_END = 0xFEC00000
IOAPIC_ADDR = 0xFEC00000  # the in-kernel IOAPIC (KVM_CREATE_IRQCHIP)
IOAPIC_PINS = 24
LAPIC_ADDR = 0xFEE00000  # every vCPU's local APIC
FIRST_ADDR_PAST_32BITS = 4 * GiB
RAM_ABOVE_HOLE_START = FIRST_ADDR_PAST_32BITS

# The 8254 PIT raises ISA IRQ 0. Like QEMU (and as the MADT's interrupt source override and the
# MP table say), IRQ 0 arrives at IOAPIC pin 2; every other ISA IRQ n at pin n. A VMM using the
# in-kernel irqchip must route GSI 0 to IOAPIC pin 2 (KVM_SET_GSI_ROUTING) to match.
PIT_IOAPIC_PIN = 2

# KVM's numbering of its in-kernel interrupt controllers (KVM_IRQCHIP_* in linux/kvm.h).
IRQCHIP_PIC_MASTER = 0
IRQCHIP_PIC_SLAVE = 1
IRQCHIP_IOAPIC = 2
ISA_IRQS = 16
PIC_CASCADE_IRQ = 2  # the slave 8259 is wired to master input 2: no device raises ISA IRQ 2


def legacy_gsi_routes() -> list[tuple[int, int, int]]:
    """The (gsi, irqchip, pin) routes of a PC's interrupt lines, as QEMU's
    ``kvm_pc_setup_irq_routing`` installs them.

    KVM's *default* table routes GSI n to IOAPIC pin n, so the in-kernel PIT (which raises
    GSI 0) would reach IOAPIC pin 0 while our MADT and MP table tell the guest it is on pin 2:
    the guest programs pin 2 and never sees a tick, and because the PIT reinjects (it sends the
    next tick only after the previous one was acknowledged, ``kvm_pit_ack_irq``) a tick that
    sits unacknowledged in a masked 8259 or a masked IOAPIC pin stops the timer for good. With
    these routes GSI 0 goes to 8259 input 0 and IOAPIC pin 2, and an EOI of IOAPIC pin 2 maps
    back to GSI 0, the PIT's ack notifier. ISA IRQs 1, 3..15 go to the 8259s and IOAPIC pin n;
    GSI 2 (the cascade) has no route; GSIs 16..23 go to the IOAPIC only.
    """
    routes: list[tuple[int, int, int]] = []
    for irq in range(ISA_IRQS):
        if irq == PIC_CASCADE_IRQ:
            continue
        chip = IRQCHIP_PIC_MASTER if irq < 8 else IRQCHIP_PIC_SLAVE
        routes.append((irq, chip, irq % 8))
        routes.append((irq, IRQCHIP_IOAPIC, ioapic_pin_for_isa_irq(irq)))
    routes.extend((gsi, IRQCHIP_IOAPIC, gsi) for gsi in range(ISA_IRQS, IOAPIC_PINS))
    return routes


def ioapic_pin_for_isa_irq(irq: int) -> int:
    """The IOAPIC input an ISA IRQ (0-15) arrives at: identity except IRQ 0 -> pin 2."""
    if not 0 <= irq < 16:
        raise ValueError(f"ISA IRQ {irq} out of range")
    return PIT_IOAPIC_PIN if irq == 0 else irq


# -- e820 -------------------------------------------------------------------------------------
E820_RAM = 1  # also the PVH XEN_HVM_MEMMAP_TYPE_RAM value (start_info.h uses e820 types)
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4


class E820Entry(FrozenRecord):
    __slots__ = ("addr", "size", "type")
    addr: int
    size: int
    type: int

    def __init__(self, addr: int, size: int, type: int) -> None:  # noqa: A002
        _set(self, "addr", addr)
        _set(self, "size", size)
        _set(self, "type", type)

    @property
    def end(self) -> int:
        return self.addr + self.size


def _check_size(mem_bytes: int) -> None:
    if mem_bytes % PAGE_SIZE:
        raise ConfigError(f"memory size {mem_bytes:#x} is not a multiple of 4 KiB")
    if mem_bytes < 2 * MiB:
        raise ConfigError(f"memory size {mem_bytes:#x} is too small for an x86 guest (2 MiB)")


def ram_regions(mem_bytes: int) -> list[tuple[int, int]]:
    """(guest_addr, size) of guest RAM: [0, min(mem, 3 GiB)) and the rest from 4 GiB up."""
    _check_size(mem_bytes)
    low = min(mem_bytes, MMIO_HOLE_START)
    regions = [(0, low)]
    if mem_bytes > low:
        regions.append((RAM_ABOVE_HOLE_START, mem_bytes - low))
    return regions


def low_ram_top(mem_bytes: int) -> int:
    """First address past the RAM below the hole (also past the RAM below 4 GiB)."""
    return ram_regions(mem_bytes)[0][1]


def e820_map(mem_bytes: int) -> list[E820Entry]:
    """The BIOS-style memory map given to Linux (boot_params) and to PVH guests (memmap).

    RAM 0..0x9fc00, reserved 0x9fc00..1 MiB (EBDA with the MP table, VGA hole, ACPI tables in
    0xE0000..0xFFFFF), RAM 1 MiB..top below the hole, RAM above 4 GiB. The ACPI tables live in
    the reserved area, which Linux maps and reads, so they need no entry of their own.
    """
    low = low_ram_top(mem_bytes)
    entries = [
        E820Entry(0, EBDA_START, E820_RAM),
        E820Entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ]
    if low > HIMEM_START:
        entries.append(E820Entry(HIMEM_START, low - HIMEM_START, E820_RAM))
    if mem_bytes > low:
        entries.append(E820Entry(RAM_ABOVE_HOLE_START, mem_bytes - low, E820_RAM))
    return entries


def initrd_address(mem_bytes: int, initrd_size: int, initrd_addr_max: int,
                   kernel_end: int) -> int | None:
    """Where the initrd goes: the highest page-aligned address with the whole initrd below
    min(RAM top below the hole, 4 GiB, initrd_addr_max + 1) and above ``kernel_end``.

    ``initrd_addr_max`` is the setup header's "highest address the initrd may *occupy*"
    (boot.rst), hence the + 1. Returns None when it does not fit.
    """
    top = min(low_ram_top(mem_bytes), FIRST_ADDR_PAST_32BITS, initrd_addr_max + 1)
    addr = (top - initrd_size) & ~(PAGE_SIZE - 1)
    if initrd_size <= 0 or addr < kernel_end:
        return None
    return addr
