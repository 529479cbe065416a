"""Loading kernels: synthetic bzImage, PVH ELF and vmlinux files, and every way to get it wrong."""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.vmm import BootError
from vnix.vmm.arch.x86 import bootparams as bp
from vnix.vmm.arch.x86 import layout as L
from vnix.vmm.arch.x86.boot import load_kernel
from vnix.vmm.arch.x86.layout import GiB, MiB
from vnix.vmm.arch.x86.paging import translate
from vnix.vmm.arch.x86.pvh import XEN_HVM_START_MAGIC_VALUE, StartInfo
from vnix.vmm.arch.x86.testing import make_bzimage, make_elf
from vnix.vmm.memory import GuestMemory

PAYLOAD = bytes(range(256)) * 400  # 100 KiB of recognisable "kernel"


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(L.ram_regions(256 * MiB))
    yield m
    m.close()


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def _zero_page(mem: GuestMemory) -> bp.BootParams:
    return bp.BootParams(bytearray(mem.read(L.ZERO_PAGE_ADDR, 4096)))


def _cstring(mem: GuestMemory, addr: int) -> str:
    raw = mem.read(addr, 4096)
    return raw[: raw.index(b"\0")].decode()


# -- bzImage ---------------------------------------------------------------------------------

def test_bzimage_loads_at_1mib_with_boot_params(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "bzImage", make_bzimage(PAYLOAD))
    initrd_data = os.urandom(300_000)
    initrd = _write(tmp_path, "initrd", initrd_data)
    state = load_kernel(mem, kernel, initrd, "console=ttyS0 quiet", 2)

    assert mem.read(0x100000, len(PAYLOAD)) == PAYLOAD
    assert state.rip == 0x100200  # 64-bit entry: load address + 0x200
    assert state.rsi == L.ZERO_PAGE_ADDR
    zp = _zero_page(mem)
    assert zp.get("<I", bp.HEADER) == bp.HDRS_MAGIC  # setup header copied from the kernel
    assert zp.get("<H", bp.VERSION) == 0x020F
    assert zp.get("<B", bp.TYPE_OF_LOADER) == 0xFF
    assert zp.get("<B", bp.LOADFLAGS) == bp.LOADED_HIGH | bp.CAN_USE_HEAP
    assert zp.get("<H", bp.HEAP_END_PTR) == 0xFE00
    assert zp.get("<I", bp.CMD_LINE_PTR) == L.CMDLINE_ADDR
    assert _cstring(mem, L.CMDLINE_ADDR) == "console=ttyS0 quiet"
    image, size = zp.get("<I", bp.RAMDISK_IMAGE), zp.get("<I", bp.RAMDISK_SIZE)
    assert size == len(initrd_data) and image % 4096 == 0
    assert mem.read(image, size) == initrd_data
    assert 256 * MiB - (image + size) < 4096  # as high as it fits
    assert zp.e820() == L.e820_map(256 * MiB)
    assert zp.get("<Q", bp.BP_ACPI_RSDP_ADDR) == L.ACPI_RSDP_ADDR
    assert mem.read(L.ACPI_RSDP_ADDR, 8) == b"RSD PTR "
    assert mem.read(L.MPTABLE_ADDR, 4) == b"_MP_"


def test_bzimage_entry_state_is_long_mode_with_linux_selectors(tmp_path: Path,
                                                               mem: GuestMemory) -> None:
    state = load_kernel(mem, _write(tmp_path, "k", make_bzimage(PAYLOAD)), None, "", 1)
    assert state.cs.selector == 0x10 and state.cs.l == 1 and state.cs.db == 0
    assert state.ds.selector == 0x18 and state.ss.selector == 0x18 and state.ds.type == 3
    assert state.efer & (1 << 10) and state.efer & (1 << 8)  # LMA, LME
    assert state.cr0 & 0x80000001 == 0x80000001 and state.cr4 & 0x20
    assert state.rflags & 0x200 == 0  # interrupts off
    # identity map of the first 4 GiB, including the LAPIC/IOAPIC in the hole
    for addr in (0, 0x100200, 0x7000, 255 * MiB + 123, 0xFEC00000, 0xFEE00030, 4 * GiB - 1):
        assert translate(mem, state.cr3, addr) == addr
    # the GDT in memory says what the segment registers say
    assert mem.read_u64(state.gdt.base + 0x10) >> 53 & 1 == 1  # L bit of __BOOT_CS
    assert state.gdt.base == L.BOOT_GDT_ADDR and state.gdt.limit >= 0x1F


def test_bzimage_in_8gib_guest_keeps_initrd_below_the_hole(tmp_path: Path) -> None:
    mem = GuestMemory(L.ram_regions(8 * GiB))
    try:
        load_kernel(mem, _write(tmp_path, "k", make_bzimage(PAYLOAD, initrd_addr_max=0xFFFFFFFF)),
                    _write(tmp_path, "i", b"x" * 5000), "", 4)
        zp = _zero_page(mem)
        assert zp.e820()[-1] == L.E820Entry(4 * GiB, 5 * GiB, L.E820_RAM)
        assert zp.get("<I", bp.RAMDISK_IMAGE) + 5000 <= 3 * GiB
    finally:
        mem.close()


def test_initrd_respects_initrd_addr_max(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "k", make_bzimage(PAYLOAD, initrd_addr_max=64 * MiB - 1))
    load_kernel(mem, kernel, _write(tmp_path, "i", b"y" * 10_000), "", 1)
    zp = _zero_page(mem)
    assert zp.get("<I", bp.RAMDISK_IMAGE) >= 16 * MiB + 4 * len(PAYLOAD)  # clear of the unpacked kernel
    end = zp.get("<I", bp.RAMDISK_IMAGE) + zp.get("<I", bp.RAMDISK_SIZE)
    assert 64 * MiB - 4096 < end <= 64 * MiB


def test_initrd_that_does_not_fit_is_refused_with_sizes(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "k", make_bzimage(PAYLOAD, initrd_addr_max=24 * MiB - 1))
    initrd = _write(tmp_path, "big.img", b"z" * (8 * MiB))
    with pytest.raises(BootError, match=r"initrd .*big.img \(8388608 bytes\) does not fit: "
                                        r"\d+ bytes free between the kernel's end 0x1064000"):
        load_kernel(mem, kernel, initrd, "", 1)


def test_cmdline_limit_comes_from_the_setup_header(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "k", make_bzimage(PAYLOAD, cmdline_size=100))
    load_kernel(mem, kernel, None, "a" * 100, 1)
    assert _cstring(mem, L.CMDLINE_ADDR) == "a" * 100
    with pytest.raises(BootError, match="101 bytes.*at most 100"):
        load_kernel(mem, kernel, None, "a" * 101, 1)


@pytest.mark.parametrize("kwargs,message", [
    ({"version": 0x0204}, "boot protocol 2.04; vnix needs 2.06"),
    ({"version": 0x020A, "xloadflags": 0}, "32-bit-only kernel"),
    ({"xloadflags": 0}, "32-bit-only kernel"),
    ({"loadflags": 0}, "zImage"),
])
def test_unsupported_bzimages_are_refused(tmp_path: Path, mem: GuestMemory,
                                          kwargs: dict[str, int], message: str) -> None:
    kernel = _write(tmp_path, "old", make_bzimage(PAYLOAD, **kwargs))
    with pytest.raises(BootError, match=message) as info:
        load_kernel(mem, kernel, None, "", 1)
    assert "old" in str(info.value) and "\n" not in str(info.value)


def test_truncated_bzimages_are_refused(tmp_path: Path, mem: GuestMemory) -> None:
    image = make_bzimage(PAYLOAD)
    for cut, what in ((0x230, "shorter than a setup header"), (0x300, "setup code alone"),
                      (len(image) - 1000, "truncated: its header says")):
        with pytest.raises(BootError, match=what):
            load_kernel(mem, _write(tmp_path, "cut", image[:cut]), None, "", 1)


def test_kernel_needing_more_memory_than_the_guest_has(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "k", make_bzimage(PAYLOAD, init_size=300 * MiB))
    with pytest.raises(BootError, match=r"needs 316 MiB of RAM to unpack .*the guest has 256 MiB"):
        load_kernel(mem, kernel, None, "", 1)


# -- files that are not kernels ---------------------------------------------------------------

def test_missing_empty_garbage_and_directory(tmp_path: Path, mem: GuestMemory) -> None:
    cases = [
        (str(tmp_path / "nope"), "does not exist"),
        (_write(tmp_path, "empty", b""), "is empty"),
        (_write(tmp_path, "garbage", os.urandom(5000)), "neither a bzImage"),
        (str(tmp_path), "is a directory"),
        (_write(tmp_path, "elfjunk", b"\x7fELF" + os.urandom(100)), "kernel .*elfjunk: "),
    ]
    for path, message in cases:
        with pytest.raises(BootError, match=message) as info:
            load_kernel(mem, path, None, "", 1)
        assert "\n" not in str(info.value)
    with pytest.raises(BootError, match="initrd .* does not exist"):
        load_kernel(mem, _write(tmp_path, "k", make_bzimage(PAYLOAD)), str(tmp_path / "x"), "", 1)


def test_kernel_larger_than_ram(tmp_path: Path) -> None:
    mem = GuestMemory(L.ram_regions(16 * MiB))
    try:
        big = tmp_path / "huge"
        with open(big, "wb") as f:
            f.truncate(17 * MiB)
        with pytest.raises(BootError, match="17 MiB, more than the guest's 16 MiB"):
            load_kernel(mem, str(big), None, "", 1)
    finally:
        mem.close()


# -- PVH ELF ----------------------------------------------------------------------------------

CODE = b"\xfa\xf4" * 64  # cli; hlt


def test_pvh_elf_loads_at_paddr_with_start_info(tmp_path: Path, mem: GuestMemory) -> None:
    mem.fill(0x200000, 0x4000, 0xAA)  # the bss must come out zeroed
    kernel = _write(tmp_path, "guest.elf", make_elf(
        [(0x100000, CODE, len(CODE)), (0x200000, b"data", 0x4000)],
        0x100000, elf64=False, pvh_entry=0x100010))
    initrd_data = b"module" * 1000
    state = load_kernel(mem, kernel, _write(tmp_path, "mod", initrd_data), "hello pvh", 2)

    assert mem.read(0x100000, len(CODE)) == CODE
    assert mem.read(0x200000, 4) == b"data" and mem.read(0x200004, 0x3FFC) == bytes(0x3FFC)
    assert state.rip == 0x100010 and state.rbx == L.PVH_INFO_ADDR
    assert state.cr0 & 1 and not state.cr0 & 0x80000000 and state.cr4 == 0 and state.efer == 0
    for seg in (state.cs, state.ds, state.es, state.ss):
        assert (seg.base, seg.limit, seg.db, seg.l, seg.present) == (0, 0xFFFFFFFF, 1, 0, 1)
    assert state.cs.type == 0xB and state.ds.type == 0x3
    assert (state.tr.base, state.tr.limit, state.tr.s) == (0, 0x67, 0)
    assert state.rflags & 0x200 == 0

    info = StartInfo.read(mem, state.rbx)
    assert (info.magic, info.version, info.flags) == (XEN_HVM_START_MAGIC_VALUE, 1, 0)
    assert _cstring(mem, info.cmdline_paddr) == "hello pvh"
    [(addr, size)] = info.modules(mem)
    assert size == len(initrd_data) and mem.read(addr, size) == initrd_data
    assert info.memmap(mem) == L.e820_map(256 * MiB)
    assert info.rsdp_paddr == L.ACPI_RSDP_ADDR
    assert mem.read(info.rsdp_paddr, 8) == b"RSD PTR "


def test_pvh_without_initrd_has_no_modules(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "g", make_elf([(0x100000, CODE, 0x1000)], 0x100000, elf64=True,
                                            pvh_entry=0x100000))
    state = load_kernel(mem, kernel, None, "", 1)
    info = StartInfo.read(mem, state.rbx)
    assert info.nr_modules == 0 and info.modlist_paddr == 0
    assert state.cs.l == 0  # PVH wins over a 64-bit ELF: 32-bit entry


@pytest.mark.parametrize("segments,message", [
    ([(0x100000, CODE, 512 * MiB)], "outside the guest's 256 MiB"),
    ([(0x7000, CODE, 0x1000)], "overlaps the boot area below 1 MiB"),
    ([(0x100000, CODE, 0x10)], "file size .* > memory size"),
])
def test_bad_pvh_segments(tmp_path: Path, mem: GuestMemory, segments: list[tuple[int, bytes, int]],
                          message: str) -> None:
    entry = segments[0][0]
    kernel = _write(tmp_path, "bad.elf", make_elf(segments, entry, elf64=False, pvh_entry=entry))
    with pytest.raises(BootError, match=message):
        load_kernel(mem, kernel, None, "", 1)


def test_truncated_elf_segment(tmp_path: Path, mem: GuestMemory) -> None:
    image = make_elf([(0x100000, CODE * 10, 0x2000)], 0x100000, elf64=False, pvh_entry=0x100000)
    # cut inside the segment's bytes (the PT_NOTE after it goes too)
    kernel = _write(tmp_path, "cut.elf", image[:200])
    with pytest.raises(BootError, match="cut.elf.*run past the end of the file"):
        load_kernel(mem, kernel, None, "", 1)


def test_pvh_entry_outside_segments(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "e.elf", make_elf([(0x100000, CODE, 0x1000)], 0x100000,
                                                elf64=False, pvh_entry=0x900000))
    with pytest.raises(BootError, match="entry point 0x900000 is not inside any loaded segment"):
        load_kernel(mem, kernel, None, "", 1)


# -- vmlinux ----------------------------------------------------------------------------------

def test_vmlinux_elf_enters_64bit_with_boot_params(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "vmlinux", make_elf(
        [(0x1000000, CODE, 0x10000)], 0xFFFFFFFF81000000, elf64=True,
        vaddr_offset=0xFFFFFFFF80000000))
    state = load_kernel(mem, kernel, _write(tmp_path, "i", b"r" * 100), "root=/dev/vda", 1)
    assert state.rip == 0x1000000  # virtual e_entry translated through its segment
    assert state.cs.l == 1 and state.rsi == L.ZERO_PAGE_ADDR
    zp = _zero_page(mem)
    assert zp.get("<I", bp.HEADER) == bp.HDRS_MAGIC and zp.get("<H", bp.BOOT_FLAG) == 0xAA55
    assert zp.get("<B", bp.TYPE_OF_LOADER) == 0xFF
    assert _cstring(mem, zp.get("<I", bp.CMD_LINE_PTR)) == "root=/dev/vda"
    assert mem.read(zp.get("<I", bp.RAMDISK_IMAGE), 100) == b"r" * 100
    assert zp.e820() == L.e820_map(256 * MiB)


def test_32bit_elf_without_pvh_note_is_refused(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "k32", make_elf([(0x100000, CODE, 0x1000)], 0x100000, elf64=False))
    with pytest.raises(BootError, match="32-bit ELF without a PVH entry note"):
        load_kernel(mem, kernel, None, "", 1)


# -- the real kernel, when the image builder has made one ---------------------------------------

def _tiny_kernel() -> Path:
    home = Path(os.environ.get("VNIX_HOME", Path.home() / ".local/share/vnix"))
    return home / "images" / "tiny" / "vmlinuz"


@pytest.mark.skipif(not _tiny_kernel().is_file(), reason="no tiny image built (vnix image build)")
def test_debian_kernel_loads(mem: GuestMemory) -> None:
    path = _tiny_kernel()
    data = path.read_bytes()
    state = load_kernel(mem, str(path), str(path), "console=ttyS0", 2)  # any file as initrd
    hdr = bp.read_setup_header(data)
    assert hdr.version >= 0x20C and hdr.xloadflags & bp.XLF_KERNEL_64
    assert state.rip == 0x100200
    assert mem.read(0x100000, 4096) == data[hdr.setup_size : hdr.setup_size + 4096]
    zp = _zero_page(mem)
    assert zp.get("<I", bp.CMD_LINE_PTR) == L.CMDLINE_ADDR
    hdr_end = max(hdr.pref_address, 0x100000) + hdr.init_size
    assert zp.get("<I", bp.RAMDISK_SIZE) == len(data)
    assert zp.get("<I", bp.RAMDISK_IMAGE) >= hdr_end  # the initrd is clear of the unpacked kernel
    assert zp.get("<Q", bp.BP_ACPI_RSDP_ADDR) == L.ACPI_RSDP_ADDR  # protocol 2.14+
    assert struct.unpack_from("<I", data, bp.HEADER)[0] == bp.HDRS_MAGIC


# -- host workarounds on the command line ------------------------------------------------------

WORKAROUNDS = ["noxsave", "nosmap", "clearcpuid=smap,popcnt,cx16"]


def test_linux_gets_the_host_workarounds_but_a_pvh_guest_does_not(tmp_path: Path, mem: GuestMemory) -> None:
    kernel = _write(tmp_path, "bzImage", make_bzimage(PAYLOAD))
    state = load_kernel(mem, kernel, None, "console=ttyS0 nosmap", 1, linux_cmdline_extra=WORKAROUNDS)
    assert _cstring(mem, L.CMDLINE_ADDR) == state.cmdline == "console=ttyS0 nosmap noxsave clearcpuid=smap,popcnt,cx16"

    guest = _write(tmp_path, "guest.elf", make_elf([(0x100000, CODE, len(CODE))], 0x100000, elf64=False,
                                                  pvh_entry=0x100000))
    state = load_kernel(mem, guest, None, "testkit x=1", 1, linux_cmdline_extra=WORKAROUNDS)
    assert _cstring(mem, L.CMDLINE_ADDR) == state.cmdline == "testkit x=1"


def test_a_users_own_option_wins_over_a_workaround() -> None:
    from vnix.vmm.arch.x86.boot import with_options

    assert with_options("clearcpuid=popcnt", WORKAROUNDS) == "clearcpuid=popcnt noxsave nosmap"
    assert with_options("", []) == ""
    assert with_options("a b", []) == "a b"


def test_bzimage_payload_unpacked_on_the_host_loads_the_vmlinux_inside(tmp_path: Path, mem: GuestMemory) -> None:
    import lzma

    code = b"\x90" * 4096
    vmlinux = make_elf([(0x1000000, code, 0x3000)], 0x1000000, elf64=True)
    packed = lzma.compress(vmlinux, format=lzma.FORMAT_XZ) + len(vmlinux).to_bytes(4, "little")
    image = bytearray(make_bzimage(b"\xeb\xfe" * 64 + packed))  # a stub "decompressor", then the payload
    struct.pack_into("<II", image, 0x248, 128, len(packed))  # payload_offset, payload_length
    kernel = _write(tmp_path, "bzImage", bytes(image))
    initrd = _write(tmp_path, "initrd", b"i" * 5000)

    state = load_kernel(mem, kernel, initrd, "console=ttyS0", 1, unpack_on_host=True)
    assert state.rip == 0x1000000 and state.rsi == L.ZERO_PAGE_ADDR  # vmlinux's startup_64, boot_params
    assert mem.read(0x1000000, len(code)) == code and mem.read(0x1000000 + len(code), 0x2000) == bytes(0x2000)
    zp = _zero_page(mem)
    assert zp.get("<I", bp.HEADER) == bp.HDRS_MAGIC  # the bzImage's own setup header
    assert _cstring(mem, L.CMDLINE_ADDR) == "console=ttyS0"

    # without unpack_on_host the kernel's own code goes to 1 MiB and runs its decompressor
    state = load_kernel(mem, kernel, initrd, "console=ttyS0", 1)
    assert state.rip == 0x100200
