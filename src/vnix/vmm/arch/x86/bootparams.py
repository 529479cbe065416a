"""Linux's ``struct boot_params`` (the "zero page") and the bzImage setup header.

Offsets are from Documentation/arch/x86/boot.rst ("THE REAL-MODE KERNEL HEADER") and
Documentation/arch/x86/zero-page.rst; both are absolute offsets into the bzImage file *and*
into boot_params, because the setup header sits at 0x1f1 in both.

::

    boot_params (4096 bytes)
    0x070  u64  acpi_rsdp_addr        (protocol 2.14+)
    0x0c0  u32  ext_ramdisk_image     0x0c4 u32 ext_ramdisk_size   0x0c8 u32 ext_cmd_line_ptr
    0x1e8  u8   e820_entries
    0x1f1  ...  struct setup_header (copied from the kernel, from 0x1f1 to 0x202 + byte[0x201])
    0x2d0  ...  e820_table[128], 20 bytes each: u64 addr, u64 size, u32 type
"""
from __future__ import annotations

import struct

from vnix.vmm.arch.x86.layout import E820Entry
from vnix.vmm.record import FrozenRecord, Record, _set

ZERO_PAGE_SIZE = 4096

# boot_params fields outside the setup header (zero-page.rst)
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128

# setup header fields (boot.rst): offset, struct format
HDR_START = 0x1F1
SETUP_SECTS = 0x1F1  # u8: 512-byte sectors of real-mode setup code after the boot sector
SYSSIZE = 0x1F4  # u32: protected-mode code size in 16-byte paragraphs
BOOT_FLAG = 0x1FE  # u16: 0xAA55
JUMP = 0x200  # u16: jmp; byte 0x201 + 0x202 = end of the header
HEADER = 0x202  # u32: "HdrS"
VERSION = 0x206  # u16: protocol version, e.g. 0x020f
TYPE_OF_LOADER = 0x210  # u8: 0xff = "undefined" boot loader
LOADFLAGS = 0x211  # u8
HEAP_END_PTR = 0x224  # u16 (2.01+)
CMD_LINE_PTR = 0x228  # u32 (2.02+)
RAMDISK_IMAGE = 0x218  # u32
RAMDISK_SIZE = 0x21C  # u32
INITRD_ADDR_MAX = 0x22C  # u32 (2.03+): highest address the initrd may occupy
KERNEL_ALIGNMENT = 0x230  # u32 (2.05+)
RELOCATABLE_KERNEL = 0x234  # u8 (2.05+)
XLOADFLAGS = 0x236  # u16 (2.12+)
CMDLINE_SIZE = 0x238  # u32 (2.06+): max command line length without the NUL
PAYLOAD_OFFSET = 0x248  # u32 (2.08+)
PAYLOAD_LENGTH = 0x24C  # u32 (2.08+)
PREF_ADDRESS = 0x258  # u64 (2.10+)
INIT_SIZE = 0x260  # u32 (2.10+): memory the kernel needs from its load address to run

HDRS_MAGIC = 0x53726448  # "HdrS"
BOOT_FLAG_MAGIC = 0xAA55
LOADED_HIGH = 0x01  # loadflags: protected-mode code loaded at 0x100000
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80  # loadflags: heap_end_ptr is valid
XLF_KERNEL_64 = 0x01  # xloadflags: has the legacy 64-bit entry point at 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
LOADER_TYPE_UNDEFINED = 0xFF
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF  # boot.rst: for protocols < 2.03
X86_64_INITRD_ADDR_MAX = 0x7FFFFFFF  # what x86-64 bzImages declare; used for a plain vmlinux
HEAP_END = 0xFE00  # heap_end_ptr: end of setup heap, relative to the real-mode start (boot.rst)
MIN_PROTOCOL = 0x206  # cmdline_size first appears in 2.06
MIN_PROTOCOL_64BIT = 0x20C  # xloadflags (XLF_KERNEL_64) first appears in 2.12
PROTOCOL_ACPI_RSDP = 0x20E  # acpi_rsdp_addr is honoured from 2.14


def version_str(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF:02d}"


class SetupHeader(FrozenRecord):
    """The fields of a bzImage's setup header vnix uses, read straight from the file."""

    __slots__ = ("setup_sects", "syssize", "version", "loadflags", "initrd_addr_max", "kernel_alignment",
                 "relocatable", "xloadflags", "cmdline_size", "pref_address", "init_size", "header_end")
    setup_sects: int
    syssize: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    header_end: int  # first byte past the setup header (0x202 + jump offset)

    def __init__(self, setup_sects: int, syssize: int, version: int, loadflags: int, initrd_addr_max: int,
                 kernel_alignment: int, relocatable: bool, xloadflags: int, cmdline_size: int, pref_address: int,
                 init_size: int, header_end: int) -> None:
        _set(self, "setup_sects", setup_sects)
        _set(self, "syssize", syssize)
        _set(self, "version", version)
        _set(self, "loadflags", loadflags)
        _set(self, "initrd_addr_max", initrd_addr_max)
        _set(self, "kernel_alignment", kernel_alignment)
        _set(self, "relocatable", relocatable)
        _set(self, "xloadflags", xloadflags)
        _set(self, "cmdline_size", cmdline_size)
        _set(self, "pref_address", pref_address)
        _set(self, "init_size", init_size)
        _set(self, "header_end", header_end)

    @property
    def setup_size(self) -> int:
        """Bytes of the real-mode part: boot sector + setup sectors (0 means 4, boot.rst)."""
        return ((self.setup_sects or 4) + 1) * 512


def has_setup_header(data: bytes) -> bool:
    return len(data) >= HEADER + 4 and struct.unpack_from("<I", data, HEADER)[0] == HDRS_MAGIC


def _u(fmt: str, data: bytes, off: int) -> int:
    return int(struct.unpack_from(fmt, data, off)[0])


def read_setup_header(data: bytes) -> SetupHeader:
    """Read the header; the caller has checked ``has_setup_header`` and the file length
    (at least 0x270 bytes)."""
    version = _u("<H", data, VERSION)
    header_end = 0x202 + data[0x201]
    return SetupHeader(
        setup_sects=data[SETUP_SECTS],
        syssize=_u("<I", data, SYSSIZE),
        version=version,
        loadflags=data[LOADFLAGS],
        initrd_addr_max=_u("<I", data, INITRD_ADDR_MAX) if version >= 0x203
        else DEFAULT_INITRD_ADDR_MAX,
        kernel_alignment=_u("<I", data, KERNEL_ALIGNMENT),
        relocatable=bool(data[RELOCATABLE_KERNEL]),
        xloadflags=_u("<H", data, XLOADFLAGS) if version >= 0x20C else 0,
        cmdline_size=_u("<I", data, CMDLINE_SIZE) if version >= 0x206 else 255,
        pref_address=_u("<Q", data, PREF_ADDRESS) if version >= 0x20A else 0,
        init_size=_u("<I", data, INIT_SIZE) if version >= 0x20A else 0,
        header_end=min(header_end, 0x290),
    )


class BootParams(Record):
    """A zero page under construction; ``bytes()`` gives the 4 KiB to write at ZERO_PAGE_ADDR."""

    __slots__ = ("page",)

    def __init__(self, page: bytearray) -> None:
        self.page = page

    @classmethod
    def from_kernel(cls, data: bytes, header: SetupHeader) -> BootParams:
        """Start from the kernel's own setup header, as boot.rst asks loaders to."""
        page = bytearray(ZERO_PAGE_SIZE)
        page[HDR_START : header.header_end] = data[HDR_START : header.header_end]
        return cls(page)

    @classmethod
    def synthetic(cls, cmdline_size: int) -> BootParams:
        """For a vmlinux without a setup header: a minimal one, as Firecracker writes."""
        page = bytearray(ZERO_PAGE_SIZE)
        bp = cls(page)
        bp.put("<H", BOOT_FLAG, BOOT_FLAG_MAGIC)
        bp.put("<I", HEADER, HDRS_MAGIC)
        bp.put("<H", VERSION, 0x20F)
        bp.put("<I", KERNEL_ALIGNMENT, 0x01000000)
        bp.put("<I", INITRD_ADDR_MAX, X86_64_INITRD_ADDR_MAX)
        bp.put("<I", CMDLINE_SIZE, cmdline_size)
        return bp

    def put(self, fmt: str, offset: int, value: int) -> None:
        struct.pack_into(fmt, self.page, offset, value)

    def get(self, fmt: str, offset: int) -> int:
        return int(struct.unpack_from(fmt, self.page, offset)[0])

    def set_loader(self, *, cmdline_addr: int, heap: bool) -> None:
        self.page[TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
        flags = self.page[LOADFLAGS] | LOADED_HIGH
        if heap:
            flags |= CAN_USE_HEAP
            self.put("<H", HEAP_END_PTR, HEAP_END)
        self.page[LOADFLAGS] = flags
        self.put("<I", CMD_LINE_PTR, cmdline_addr)
        self.put("<I", BP_EXT_CMD_LINE_PTR, 0)

    def set_ramdisk(self, addr: int, size: int) -> None:
        self.put("<I", RAMDISK_IMAGE, addr & 0xFFFFFFFF)
        self.put("<I", RAMDISK_SIZE, size & 0xFFFFFFFF)
        self.put("<I", BP_EXT_RAMDISK_IMAGE, addr >> 32)
        self.put("<I", BP_EXT_RAMDISK_SIZE, size >> 32)

    def set_e820(self, entries: list[E820Entry]) -> None:
        if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
            raise ValueError("too many e820 entries for the zero page")
        self.page[BP_E820_ENTRIES] = len(entries)
        for i, e in enumerate(entries):
            struct.pack_into("<QQI", self.page, BP_E820_TABLE + 20 * i, e.addr, e.size, e.type)

    def set_acpi_rsdp(self, addr: int) -> None:
        self.put("<Q", BP_ACPI_RSDP_ADDR, addr)

    def e820(self) -> list[E820Entry]:
        return [E820Entry(*struct.unpack_from("<QQI", self.page, BP_E820_TABLE + 20 * i))
                for i in range(self.page[BP_E820_ENTRIES])]

    def __bytes__(self) -> bytes:
        return bytes(self.page)
