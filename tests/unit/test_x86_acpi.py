"""ACPI tables and the MP table: checksums, lengths, one LAPIC per vCPU, AML that iasl reads."""
from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.vmm.arch.x86 import acpi, aml
from vnix.vmm.arch.x86 import layout as L
from vnix.vmm.arch.x86.mptable import build_mptable, write_mptable
from vnix.vmm.memory import GuestMemory


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(L.ram_regions(64 * L.MiB))
    yield m
    m.close()


def _tables(mem: GuestMemory, nr_vcpus: int, **kw: object) -> dict[bytes, tuple[int, bytes]]:
    """Follow RSDP -> XSDT -> tables (and FADT -> DSDT) the way an OS does."""
    rsdp_addr = acpi.write_acpi_tables(mem, nr_vcpus, **kw)  # type: ignore[arg-type]
    rsdp = mem.read(rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2  # revision 2
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]
    out: dict[bytes, tuple[int, bytes]] = {}

    def table(addr: int) -> bytes:
        sig, length = struct.unpack("<4sI", mem.read(addr, 8))
        raw = mem.read(addr, length)
        assert sum(raw) % 256 == 0, f"{sig!r} checksum"
        assert L.ACPI_RSDP_ADDR <= addr and addr + length <= L.ACPI_TABLES_END
        out[sig] = (addr, raw)
        return raw

    xsdt = table(xsdt_addr)
    for (ptr,) in struct.iter_unpack("<Q", xsdt[36:]):
        table(ptr)
    fadt = out[b"FACP"][1]
    dsdt_addr = struct.unpack_from("<Q", fadt, 140)[0]
    assert struct.unpack_from("<I", fadt, 40)[0] == dsdt_addr
    table(dsdt_addr)
    return out


@pytest.mark.parametrize("nr_vcpus", [1, 2, 8])
def test_tables_checksum_and_madt_has_one_lapic_per_vcpu(mem: GuestMemory, nr_vcpus: int) -> None:
    tables = _tables(mem, nr_vcpus)
    assert set(tables) == {b"XSDT", b"FACP", b"APIC", b"DSDT"}
    madt = tables[b"APIC"][1]
    assert struct.unpack_from("<I", madt, 36)[0] == L.LAPIC_ADDR
    lapics, ioapics, overrides = [], [], []
    pos = 44
    while pos < len(madt):
        etype, elen = madt[pos], madt[pos + 1]
        assert elen >= 2 and pos + elen <= len(madt)
        if etype == 0:
            _, _, uid, apic_id, flags = struct.unpack_from("<BBBBI", madt, pos)
            lapics.append((uid, apic_id, flags & 1))
        elif etype == 1:
            ioapics.append(struct.unpack_from("<BBBBII", madt, pos)[2:])
        elif etype == 2:
            overrides.append(struct.unpack_from("<BBBBIH", madt, pos)[3:5])
        pos += elen
    assert pos == len(madt)
    assert lapics == [(i, i, 1) for i in range(nr_vcpus)]
    assert ioapics == [(nr_vcpus, 0, L.IOAPIC_ADDR, 0)]
    assert overrides == [(0, 2)]  # ISA IRQ 0 -> GSI 2, like QEMU


def test_fadt_is_hardware_reduced_with_sleep_and_reset_registers(mem: GuestMemory) -> None:
    fadt = _tables(mem, 1)[b"FACP"][1]
    assert len(fadt) == 276 and fadt[8] == 6  # revision 6
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 20) and flags & (1 << 10)  # HW_REDUCED_ACPI, RESET_REG_SUP
    # GAS: space 1 (system I/O), 8 bits, offset 0, byte access, address
    assert struct.unpack_from("<BBBBQ", fadt, 116) == (1, 8, 0, 1, 0x602)
    assert fadt[128] == 1  # RESET_VALUE
    assert struct.unpack_from("<BBBBQ", fadt, 244) == (1, 8, 0, 1, 0x600)
    assert struct.unpack_from("<BBBBQ", fadt, 256) == (1, 8, 0, 1, 0x601)
    assert struct.unpack_from("<H", fadt, 46)[0] == 0  # no SCI
    assert acpi.S5_POWEROFF_BYTE == 0x34


def test_aml_encodings() -> None:
    assert aml.pkg_length(10) == bytes([11])
    assert aml.pkg_length(0x3E) == bytes([0x3F])
    assert aml.pkg_length(0x3F) == bytes([0x41, 0x04])  # 0x41 total: lead nibble 1, byte 0x04
    # 0x1000 + 3 length bytes = 0x1003 does not fit 12 bits: two following bytes
    assert aml.pkg_length(0x1000) == bytes([0x83, 0x00, 0x01])
    assert aml.integer(0) == b"\x00" and aml.integer(5) == b"\x0a\x05"
    assert aml.integer(0x505) == b"\x0b\x05\x05"
    assert aml.eisa_id("PNP0501") == b"\x0c" + struct.pack("<I", 0x0105D041)
    assert aml.name_string("\\_SB.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name("_S5", aml.package(5, 0, 0, 0)) == \
        b"\x08_S5_\x12\x07\x04\x0a\x05\x00\x00\x00"
    with pytest.raises(ValueError):
        aml.name_string("bad!")


def test_dsdt_declares_s5_pvpanic_com1_and_mmio_devices(mem: GuestMemory) -> None:
    devs = [acpi.AcpiMmioDevice(0xD0000000, 0x1000, 5)]
    dsdt = _tables(mem, 2, devices=devs)[b"DSDT"][1]
    body = dsdt[36:]
    assert b"\x08\\_S5_\x12" in body
    assert b"QEMU0001\x00" in body and b"\x47\x01\x05\x05\x05\x05\x01\x01" in body
    assert b"COM1" in body and b"LNRO0005\x00" in body
    assert struct.pack("<BHBII", 0x86, 9, 1, 0xD0000000, 0x1000) in body


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
def test_iasl_disassembles_every_table(mem: GuestMemory, tmp_path: Path) -> None:
    tables = _tables(mem, 4, devices=[acpi.AcpiMmioDevice(0xD0000000, 0x200, 5)])
    listings = {}
    for sig, (_addr, raw) in tables.items():
        name = sig.decode().lower()
        (tmp_path / f"{name}.dat").write_bytes(raw)
        run = subprocess.run(["iasl", "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        listings[sig] = (tmp_path / f"{name}.dsl").read_text()
        assert "Invalid" not in listings[sig] and "Incorrect" not in listings[sig]
    dsdt = listings[b"DSDT"]
    assert 'Name (\\_S5, Package (0x04)' in dsdt
    assert "0x05, \n        Zero, \n        Zero, \n        Zero" in dsdt
    assert 'Name (_HID, "QEMU0001")' in dsdt
    assert 'IO (Decode16,' in dsdt and "0x0505," in dsdt
    assert 'Name (_HID, EisaId ("PNP0501")' in dsdt
    assert 'IRQNoFlags ()' in dsdt and "{4}" in dsdt
    assert 'Memory32Fixed (ReadWrite,' in dsdt and "0xD0000000" in dsdt
    madt = listings[b"APIC"]
    assert madt.count("Subtable Type : 00 [Processor Local APIC]") == 4
    fadt = listings[b"FACP"]
    assert "Hardware Reduced (V5) : 1" in fadt and "Reset Register Supported (V2) : 1" in fadt
    assert "Address : 0000000000000600" in fadt and "Value to cause reset : 01" in fadt


# -- MP table ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nr_vcpus", [1, 2, 8])
def test_mptable_checksums_and_entries(mem: GuestMemory, nr_vcpus: int) -> None:
    addr = write_mptable(mem, nr_vcpus)
    assert addr == 0x9FC00
    fp = mem.read(addr, 16)
    assert fp[:4] == b"_MP_" and sum(fp) % 256 == 0 and fp[8] == 1 and fp[9] == 4
    cfg_addr = struct.unpack_from("<I", fp, 4)[0]
    sig, length, rev, _cs = struct.unpack("<4sHBB", mem.read(cfg_addr, 8))
    cfg = mem.read(cfg_addr, length)
    assert sig == b"PCMP" and rev == 4 and sum(cfg) % 256 == 0
    count, lapic = struct.unpack_from("<HI", cfg, 34)
    assert lapic == L.LAPIC_ADDR
    pos, cpus, irqs, lints, buses, ioapics = 44, [], {}, [], [], []
    for _ in range(count):
        etype = cfg[pos]
        if etype == 0:
            _, apic_id, _ver, flags = struct.unpack_from("<BBBB", cfg, pos)
            cpus.append((apic_id, flags))
            pos += 20
            continue
        entry = struct.unpack_from("<BBBBBBBB", cfg, pos)
        if etype == 1:
            buses.append(cfg[pos + 2 : pos + 8])
        elif etype == 2:
            ioapics.append(entry[1])
        elif etype == 3:
            irqs[entry[5]] = entry[7]
        elif etype == 4:
            lints.append((entry[1], entry[7]))
        pos += 8
    assert pos == length
    assert cpus == [(0, 3)] + [(i, 1) for i in range(1, nr_vcpus)]  # CPU 0 is the BSP
    assert buses == [b"ISA   "] and ioapics == [nr_vcpus]
    assert irqs == {i: (2 if i == 0 else i) for i in range(16)}
    assert lints == [(3, 0), (1, 1)]  # ExtINT on LINT0, NMI on LINT1
    assert len(build_mptable(nr_vcpus)) + addr <= 0xA0000
