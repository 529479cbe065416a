"""A tiny AML encoder: enough ACPI Machine Language for vnix's DSDT.

Encodings from the ACPI 6.4 specification, chapter 20 "ACPI Machine Language (AML)
Specification" (20.2 "AML Grammar Definition") and chapter 6.4 "Resource Data Types":

* NameString: 4-character NameSegs ('_' padded), RootChar '\\' 0x5C, DualNamePrefix 0x2E,
  MultiNamePrefix 0x2F + count.
* PkgLength (20.2.4): one byte when the length (which counts the PkgLength bytes
  themselves) is < 0x40; otherwise bits 7-6 of the lead byte give 1-3 following bytes, bits 3-0
  the low nibble, each following byte the next 8 bits.
* Integers: ZeroOp 0x00, OneOp 0x01, OnesOp 0xFF, BytePrefix 0x0A, WordPrefix 0x0B,
  DWordPrefix 0x0C, QWordPrefix 0x0E. String: 0x0D bytes 0x00. Buffer: 0x11 PkgLength size data.
* NameOp 0x08, ScopeOp 0x10, PackageOp 0x12 (NumElements is one byte), DeviceOp 0x5B 0x82.

Every builder returns ``bytes``; compose them by concatenation.
"""
from __future__ import annotations

import struct

NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
STRING_PREFIX = 0x0D
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
QWORD_PREFIX = 0x0E
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
ROOT_CHAR = 0x5C
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F

AmlValue = int | str | bytes


def _nameseg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_"):
        raise ValueError(f"bad ACPI name segment {seg!r}")
    if not all(c.isupper() or c.isdigit() or c == "_" for c in seg):
        raise ValueError(f"bad ACPI name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """'\\_SB_.COM1' -> RootChar + DualNamePrefix + segs; '_S5' -> '_S5_'."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    segs = [s for s in path.split(".") if s]
    if not segs:
        return prefix + b"\x00"  # NullName
    body = b"".join(_nameseg(s) for s in segs)
    if len(segs) == 1:
        return prefix + body
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + body
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + body


def pkg_length(payload_len: int) -> bytes:
    """The PkgLength for ``payload_len`` bytes following it (20.2.4)."""
    for extra in range(4):
        total = payload_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([lead]) + rest
    raise ValueError(f"AML package of {payload_len} bytes is too long")


def integer(value: int) -> bytes:
    if value < 0 or value > 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"AML integer {value} out of range")
    if value == 0:
        return b"\x00"
    if value == 1:
        return b"\x01"
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value <= 0xFFFFFFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\x00"


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def value(v: AmlValue) -> bytes:
    if isinstance(v, bool):
        raise TypeError("use 0/1 for AML integers")
    if isinstance(v, int):
        return integer(v)
    if isinstance(v, str):
        return string(v)
    return v  # already-encoded AML (a buffer, a package, an EISA id integer)


def package(*elements: AmlValue) -> bytes:
    if len(elements) > 0xFF:
        raise ValueError("AML Package with more than 255 elements")
    body = bytes([len(elements)]) + b"".join(value(e) for e in elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def name(path: str, v: AmlValue) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value(v)


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0501"): three letters of 5 bits and four hex digits, stored big-endian in a
    DWord (ACPI 6.4, 19.6.35 "EISAID")."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id {text!r}")
    letters = [(ord(c) - 0x40) & 0x1F for c in text[:3]]
    product = int(text[3:], 16)
    packed = (letters[0] << 26) | (letters[1] << 21) | (letters[2] << 16) | product
    return integer(int.from_bytes(packed.to_bytes(4, "big"), "little"))


# -- resource descriptors (ACPI 6.4, 6.4.2 small and 6.4.3 large resource data types) ------

def io_port(base: int, length: int, alignment: int = 1) -> bytes:
    """I/O Port Descriptor (6.4.2.5): 16-bit decode, fixed min = max = base."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, alignment, length)


def irq_no_flags(irq: int) -> bytes:
    """IRQ Descriptor without the information byte (6.4.2.1): edge, active high."""
    return struct.pack("<BH", 0x22, 1 << irq)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """32-bit Fixed Memory Range Descriptor (6.4.3.4)."""
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, length)


def extended_interrupt(gsi: int, *, level: bool = False, active_low: bool = False,
                       shared: bool = False) -> bytes:
    """Extended Interrupt Descriptor (6.4.3.6), one interrupt, ResourceConsumer."""
    flags = 0x01 | (0 if level else 0x02) | (0x04 if active_low else 0) | (0x08 if shared else 0)
    return struct.pack("<BHBBI", 0x89, 6, flags, 1, gsi)


# Address space descriptors (6.4.3.5.2 DWord, 6.4.3.5.3 Word) as a PCI root bridge produces them:
# ResourceProducer, positive decode, MinFixed and MaxFixed (general flags 0x0C).
_ADDR_PRODUCER_FIXED = 0x0C
RES_MEMORY, RES_IO, RES_BUS = 0, 1, 2


def word_address(kind: int, minimum: int, maximum: int, *, type_flags: int = 0) -> bytes:
    """Word Address Space Descriptor (6.4.3.5.3): bus numbers or a 16-bit I/O range."""
    return struct.pack("<BHBBBHHHHH", 0x88, 13, kind, _ADDR_PRODUCER_FIXED, type_flags, 0, minimum,
                       maximum, 0, maximum - minimum + 1)


def word_bus_number(first: int, last: int) -> bytes:
    return word_address(RES_BUS, first, last)


def word_io(minimum: int, maximum: int) -> bytes:
    """An I/O window (type flags: _RNG EntireRange = 3)."""
    return word_address(RES_IO, minimum, maximum, type_flags=3)


def dword_memory(minimum: int, maximum: int) -> bytes:
    """DWord Address Space Descriptor (6.4.3.5.2) for a read-write, non-cacheable memory window."""
    return struct.pack("<BHBBBIIIII", 0x87, 23, RES_MEMORY, _ADDR_PRODUCER_FIXED, 0x01, 0, minimum,
                       maximum, 0, maximum - minimum + 1)


def resource_template(*descriptors: bytes) -> bytes:
    """A Buffer of descriptors closed by an End Tag (6.4.2.9) with checksum 0 ("ignore")."""
    return buffer(b"".join(descriptors) + b"\x79\x00")
