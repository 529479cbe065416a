"""Builders of small synthetic kernels, for tests here and in other packages.

They write real formats (a bzImage setup header per boot.rst, ELF32/ELF64 files with PT_LOAD
and PT_NOTE program headers), so the loader under test reads exactly what it reads from a
real kernel. The payloads are whatever bytes the caller passes (e.g. guest machine code).
"""
from __future__ import annotations

import struct

from vnix.vmm.arch.x86 import bootparams as bp
from vnix.vmm.arch.x86 import elf


def make_bzimage(payload: bytes, *, version: int = 0x020F, setup_sects: int = 4,
                 xloadflags: int = bp.XLF_KERNEL_64, loadflags: int = bp.LOADED_HIGH,
                 cmdline_size: int = 2047, initrd_addr_max: int = 0x7FFFFFFF,
                 init_size: int | None = None, pref_address: int = 0x1000000) -> bytes:
    """A bzImage: boot sector + ``setup_sects`` setup sectors (header at 0x1f1), then
    ``payload`` as the protected-mode kernel."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[bp.SETUP_SECTS] = setup_sects
    syssize = (len(payload) + 15) // 16
    struct.pack_into("<I", setup, bp.SYSSIZE, syssize)
    struct.pack_into("<H", setup, bp.BOOT_FLAG, bp.BOOT_FLAG_MAGIC)
    # jmp short over the header: EB xx, header ends at 0x202 + xx (0x268 + 4 for 2.15)
    setup[0x200] = 0xEB
    setup[0x201] = 0x6A
    struct.pack_into("<I", setup, bp.HEADER, bp.HDRS_MAGIC)
    struct.pack_into("<H", setup, bp.VERSION, version)
    setup[bp.LOADFLAGS] = loadflags
    struct.pack_into("<I", setup, bp.INITRD_ADDR_MAX, initrd_addr_max)
    struct.pack_into("<I", setup, bp.KERNEL_ALIGNMENT, 0x200000)
    setup[bp.RELOCATABLE_KERNEL] = 1
    struct.pack_into("<H", setup, bp.XLOADFLAGS, xloadflags)
    struct.pack_into("<I", setup, bp.CMDLINE_SIZE, cmdline_size)
    struct.pack_into("<Q", setup, bp.PREF_ADDRESS, pref_address)
    struct.pack_into("<I", setup, bp.INIT_SIZE,
                     init_size if init_size is not None else len(payload) * 4)
    return bytes(setup) + payload


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name_z), len(desc), ntype) + pad(name_z) + pad(desc)


def make_elf(segments: list[tuple[int, bytes, int]], entry: int, *, elf64: bool,
             pvh_entry: int | None = None, vaddr_offset: int = 0) -> bytes:
    """An executable ELF. ``segments`` are (paddr, file bytes, memsz); each gets
    vaddr = paddr + vaddr_offset. With ``pvh_entry`` a PT_NOTE carries the Xen
    XEN_ELFNOTE_PHYS32_ENTRY note (4-byte value, as Linux and the test kit emit)."""
    note = _note(b"Xen", elf.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", pvh_entry)) \
        if pvh_entry is not None else b""
    phnum = len(segments) + (1 if note else 0)
    ehsize, phentsize = (64, 56) if elf64 else (52, 32)
    data_off = ehsize + phnum * phentsize
    blobs: list[bytes] = []
    phdrs: list[bytes] = []
    off = data_off
    for paddr, blob, memsz in segments:
        vaddr = paddr + vaddr_offset
        if elf64:
            phdrs.append(struct.pack("<IIQQQQQQ", elf.PT_LOAD, 7, off, vaddr, paddr, len(blob),
                                     memsz, 0x1000))
        else:
            phdrs.append(struct.pack("<IIIIIIII", elf.PT_LOAD, off, vaddr, paddr, len(blob),
                                     memsz, 7, 0x1000))
        blobs.append(blob)
        off += len(blob)
    if note:
        if elf64:
            phdrs.append(struct.pack("<IIQQQQQQ", elf.PT_NOTE, 4, off, 0, 0, len(note),
                                     len(note), 4))
        else:
            phdrs.append(struct.pack("<IIIIIIII", elf.PT_NOTE, off, 0, 0, len(note), len(note),
                                     4, 4))
        blobs.append(note)
    ident = b"\x7fELF" + bytes([2 if elf64 else 1, 1, 1, 0]) + b"\0" * 8
    machine = elf.EM_X86_64 if elf64 else elf.EM_386
    if elf64:
        header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0,
                                     ehsize, phentsize, phnum, 64, 0, 0)
    else:
        header = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0,
                                     ehsize, phentsize, phnum, 40, 0, 0)
    return header + b"".join(phdrs) + b"".join(blobs)
