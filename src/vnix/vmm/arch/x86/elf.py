"""A small, strict ELF reader for kernels: class, machine, PT_LOAD segments and notes.

Only what a loader needs (System V gABI, "ELF Header", "Program Header", "Note Section"):

* ELF header: ``\\x7fELF``, EI_CLASS 1 (32-bit) or 2 (64-bit), EI_DATA 1 (little endian),
  e_machine EM_386 (3) or EM_X86_64 (62), e_entry, e_phoff, e_phentsize, e_phnum.
* PT_LOAD (1) segments: p_offset, p_paddr, p_filesz, p_memsz — every one checked against the
  file here and against guest RAM by the caller.
* PT_NOTE (4) segments (and, if there are none, SHT_NOTE sections): the PVH entry is the note
  named "Xen" of type 18, XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h), whose
  descriptor is the 32-bit physical entry address (4 bytes, or 8 in some 64-bit builds).

Every offset and size read from the file is checked before use: a hostile or truncated file
raises :class:`ElfError` with a one-line reason, never an IndexError or struct.error.
"""
from __future__ import annotations

import struct

from vnix.vmm.record import FrozenRecord, _set

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
SHT_NOTE = 7
XEN_ELFNOTE_PHYS32_ENTRY = 18
MAX_PHNUM = 256
MAX_SHNUM = 4096


class ElfError(ValueError):
    """The file is not an ELF we can load (the boot loader turns it into a BootError)."""


class Segment(FrozenRecord):
    __slots__ = ("offset", "paddr", "vaddr", "filesz", "memsz")
    offset: int
    paddr: int
    vaddr: int
    filesz: int
    memsz: int

    def __init__(self, offset: int, paddr: int, vaddr: int, filesz: int, memsz: int) -> None:
        _set(self, "offset", offset)
        _set(self, "paddr", paddr)
        _set(self, "vaddr", vaddr)
        _set(self, "filesz", filesz)
        _set(self, "memsz", memsz)


class ElfImage(FrozenRecord):
    __slots__ = ("elf_class", "machine", "entry", "segments", "pvh_entry")
    elf_class: int  # ELFCLASS32 or ELFCLASS64
    machine: int
    entry: int
    segments: list[Segment]
    pvh_entry: int | None  # XEN_ELFNOTE_PHYS32_ENTRY, if present

    def __init__(self, elf_class: int, machine: int, entry: int, segments: list[Segment], pvh_entry: int | None) -> None:
        _set(self, "elf_class", elf_class)
        _set(self, "machine", machine)
        _set(self, "entry", entry)
        _set(self, "segments", segments)
        _set(self, "pvh_entry", pvh_entry)

    @property
    def is_64bit(self) -> bool:
        return self.elf_class == ELFCLASS64


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _unpack(fmt: str, data: bytes, offset: int, what: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ElfError(f"truncated: {what} at {offset:#x} runs past the end of the file")
    return struct.unpack_from(fmt, data, offset)


def _notes(data: bytes, offset: int, size: int) -> dict[tuple[bytes, int], bytes]:
    """Parse a note area: namesz, descsz, type, then name and desc, each padded to 4 bytes."""
    if offset < 0 or size < 0 or offset + size > len(data):
        raise ElfError(f"note area {offset:#x}+{size:#x} runs past the end of the file")
    notes: dict[tuple[bytes, int], bytes] = {}
    pos, end = offset, offset + size
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        nxt = desc_at + ((descsz + 3) & ~3)
        if nxt > end:
            raise ElfError(f"note at {pos:#x} runs past its note area")
        name = data[name_at : name_at + namesz].rstrip(b"\0")
        notes.setdefault((name, ntype), data[desc_at : desc_at + descsz])
        pos = nxt
    return notes


def parse(data: bytes) -> ElfImage:
    if not is_elf(data):
        raise ElfError("not an ELF file (no \\x7fELF magic)")
    if len(data) < 52:
        raise ElfError("truncated ELF header")
    elf_class, encoding = data[4], data[5]
    if elf_class not in (ELFCLASS32, ELFCLASS64):
        raise ElfError(f"unknown ELF class {elf_class}")
    if encoding != ELFDATA2LSB:
        raise ElfError("big-endian ELF, not an x86 kernel")
    if elf_class == ELFCLASS64:
        (machine, _ver, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize,
         shnum, _shstrndx) = _unpack("<HIQQQIHHHHHH", data, 18, "ELF header")
        ph_fmt, ph_min = "<IIQQQQQQ", 56
    else:
        (machine, _ver, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize,
         shnum, _shstrndx) = _unpack("<HIIIIIHHHHHH", data, 18, "ELF header")
        ph_fmt, ph_min = "<IIIIIIII", 32
    if machine not in (EM_386, EM_X86_64):
        raise ElfError(f"ELF machine {machine} is not x86 (3) or x86-64 (62)")
    if phnum == 0 or phnum > MAX_PHNUM:
        raise ElfError(f"ELF has {phnum} program headers (expected 1..{MAX_PHNUM})")
    if phentsize < ph_min:
        raise ElfError(f"ELF program header size {phentsize} is smaller than {ph_min}")

    segments: list[Segment] = []
    notes: dict[tuple[bytes, int], bytes] = {}
    for i in range(phnum):
        at = phoff + i * phentsize
        raw = _unpack(ph_fmt, data, at, f"program header {i}")
        if elf_class == ELFCLASS64:
            p_type, _pflags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _align = raw
        else:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _pflags, _align = raw
        if p_type == PT_LOAD:
            if p_filesz > p_memsz:
                raise ElfError(f"segment {i}: file size {p_filesz:#x} > memory size {p_memsz:#x}")
            if p_offset + p_filesz > len(data):
                raise ElfError(
                    f"segment {i}: bytes {p_offset:#x}+{p_filesz:#x} run past the end of the "
                    f"file ({len(data):#x} bytes): truncated?"
                )
            segments.append(Segment(p_offset, p_paddr, p_vaddr, p_filesz, p_memsz))
        elif p_type == PT_NOTE:
            notes.update(_notes(data, p_offset, p_filesz))
    if not notes and shnum and shentsize:
        notes = _section_notes(data, elf_class, shoff, shentsize, shnum)
    if not segments:
        raise ElfError("ELF has no PT_LOAD segment")
    return ElfImage(elf_class, machine, entry, segments, _pvh_entry(notes))


def _section_notes(data: bytes, elf_class: int, shoff: int, shentsize: int,
                   shnum: int) -> dict[tuple[bytes, int], bytes]:
    fmt = "<IIQQQQIIQQ" if elf_class == ELFCLASS64 else "<IIIIIIIIII"
    if shnum > MAX_SHNUM or shentsize < struct.calcsize(fmt):
        return {}
    notes: dict[tuple[bytes, int], bytes] = {}
    for i in range(shnum):
        raw = _unpack(fmt, data, shoff + i * shentsize, f"section header {i}")
        sh_type, sh_offset, sh_size = raw[1], raw[4], raw[5]
        if sh_type == SHT_NOTE:
            notes.update(_notes(data, sh_offset, sh_size))
    return notes


def _pvh_entry(notes: dict[tuple[bytes, int], bytes]) -> int | None:
    desc = notes.get((b"Xen", XEN_ELFNOTE_PHYS32_ENTRY))
    if desc is None:
        return None
    if len(desc) == 4:
        return int(struct.unpack("<I", desc)[0])
    if len(desc) == 8:
        return int(struct.unpack("<Q", desc)[0])
    raise ElfError(f"Xen PHYS32_ENTRY note has a {len(desc)}-byte value (expected 4 or 8)")
