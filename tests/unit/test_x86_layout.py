"""The guest-physical layout and the e820 map, for small and large guests."""
from __future__ import annotations

import pytest

from vnix.vmm import ConfigError
from vnix.vmm.arch.x86 import layout as L
from vnix.vmm.arch.x86.layout import E820_RAM, E820_RESERVED, GiB, MiB


def _ram(entries: list[L.E820Entry]) -> int:
    return sum(e.size for e in entries if e.type == E820_RAM)


@pytest.mark.parametrize("mem", [256 * MiB, 3 * GiB, 4 * GiB, 8 * GiB])
def test_e820_covers_exactly_the_guest_ram(mem: int) -> None:
    regions = L.ram_regions(mem)
    assert sum(size for _, size in regions) == mem
    e820 = L.e820_map(mem)
    # entries are sorted, do not overlap, and together cover exactly the RAM regions
    for a, b in zip(e820, e820[1:]):
        assert a.end <= b.addr
    covered = sum(e.size for e in e820)
    assert covered == mem
    # only the EBDA/VGA/BIOS area (0x9fc00..1 MiB) is withheld from the OS
    assert _ram(e820) == mem - (L.HIMEM_START - L.EBDA_START)
    assert L.E820Entry(0, 0x9FC00, E820_RAM) == e820[0]
    assert L.E820Entry(0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED) == e820[1]
    # nothing is RAM inside the 3..4 GiB hole, where the IOAPIC and LAPIC live
    for e in e820:
        if e.type == E820_RAM:
            assert e.end <= L.MMIO_HOLE_START or e.addr >= L.MMIO_HOLE_END
    assert L.MMIO_HOLE_START <= L.IOAPIC_ADDR < L.LAPIC_ADDR < L.MMIO_HOLE_END


def test_small_guest_is_one_region() -> None:
    assert L.ram_regions(256 * MiB) == [(0, 256 * MiB)]
    assert L.e820_map(256 * MiB)[-1] == L.E820Entry(MiB, 255 * MiB, E820_RAM)


def test_three_gib_fills_the_space_below_the_hole_exactly() -> None:
    assert L.ram_regions(3 * GiB) == [(0, 3 * GiB)]


@pytest.mark.parametrize("mem,above", [(4 * GiB, 1 * GiB), (8 * GiB, 5 * GiB)])
def test_ram_past_3gib_resumes_at_4gib(mem: int, above: int) -> None:
    assert L.ram_regions(mem) == [(0, 3 * GiB), (4 * GiB, above)]
    last = L.e820_map(mem)[-1]
    assert (last.addr, last.size, last.type) == (4 * GiB, above, E820_RAM)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of 4 KiB"):
        L.ram_regions(256 * MiB + 1)
    with pytest.raises(ConfigError, match="too small"):
        L.ram_regions(4096)


def test_boot_structures_do_not_overlap() -> None:
    areas = [
        ("gdt", L.BOOT_GDT_ADDR, 8 * L.BOOT_GDT_MAX_ENTRIES),
        ("idt", L.BOOT_IDT_ADDR, 8),
        ("pvh", L.PVH_INFO_ADDR, 0x1000),
        ("zero page", L.ZERO_PAGE_ADDR, 0x1000),
        ("stack", 0x8000, L.BOOT_STACK_POINTER + 16 - 0x8000),
        ("pml4", L.PML4_ADDR, 0x1000),
        ("pdpt", L.PDPT_ADDR, 0x1000),
        ("pd", L.PD_ADDR, 0x1000 * L.PD_COUNT),
        ("cmdline", L.CMDLINE_ADDR, L.CMDLINE_MAX_SIZE),
        ("mptable", L.MPTABLE_ADDR, L.MPTABLE_MAX_SIZE),
        ("acpi", L.ACPI_RSDP_ADDR, L.ACPI_TABLES_END - L.ACPI_RSDP_ADDR),
    ]
    areas.sort(key=lambda a: a[1])
    for (n1, a1, s1), (n2, a2, _s2) in zip(areas, areas[1:]):
        assert a1 + s1 <= a2, f"{n1} overlaps {n2}"
    assert areas[-1][1] + areas[-1][2] <= L.KERNEL_LOAD_ADDR


def test_initrd_goes_high_page_aligned_and_respects_initrd_addr_max() -> None:
    mem = 256 * MiB
    addr = L.initrd_address(mem, 10_000, 0x7FFFFFFF, 2 * MiB)
    assert addr is not None and addr % 4096 == 0
    assert addr + 10_000 <= mem and mem - (addr + 10_000) < 4096
    capped = L.initrd_address(mem, 10_000, 64 * MiB - 1, 2 * MiB)
    assert capped is not None and capped + 10_000 <= 64 * MiB
    # 8 GiB guest: the initrd still lands below the hole
    big = L.initrd_address(8 * GiB, MiB, 0xFFFFFFFF, 2 * MiB)
    assert big == 3 * GiB - MiB
    assert L.initrd_address(mem, mem, 0x7FFFFFFF, 2 * MiB) is None


def test_isa_irq0_is_wired_to_ioapic_pin2() -> None:
    assert L.ioapic_pin_for_isa_irq(0) == 2
    assert [L.ioapic_pin_for_isa_irq(i) for i in range(1, 16)] == list(range(1, 16))


def test_gsi_routes_put_the_pit_where_the_madt_says() -> None:
    routes = L.legacy_gsi_routes()
    by_gsi: dict[int, set[tuple[int, int]]] = {}
    for gsi, chip, pin in routes:
        by_gsi.setdefault(gsi, set()).add((chip, pin))
    # GSI 0 (the PIT) reaches the master 8259's input 0 and IOAPIC pin 2, as the MADT override says
    assert by_gsi[0] == {(L.IRQCHIP_PIC_MASTER, 0), (L.IRQCHIP_IOAPIC, 2)}
    assert 2 not in by_gsi  # the cascade input
    assert by_gsi[4] == {(L.IRQCHIP_PIC_MASTER, 4), (L.IRQCHIP_IOAPIC, 4)}  # COM1
    assert by_gsi[12] == {(L.IRQCHIP_PIC_SLAVE, 4), (L.IRQCHIP_IOAPIC, 12)}
    assert by_gsi[23] == {(L.IRQCHIP_IOAPIC, 23)}
    # no IOAPIC pin is fed by two GSIs (KVM maps an EOI on a pin back to one GSI)
    ioapic_pins = [pin for _gsi, chip, pin in routes if chip == L.IRQCHIP_IOAPIC]
    assert len(ioapic_pins) == len(set(ioapic_pins)) == L.IOAPIC_PINS - 1
