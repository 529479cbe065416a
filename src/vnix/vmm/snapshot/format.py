"""The snapshot file: one file a snapshot, its memory page-aligned so a clone can map it.

Layout (little-endian; every offset a multiple of 4096)::

    0x0000  header page (4096 bytes)
            +0   8  magic  b"VNIXSNP\\0"
            +8   4  version (1)
            +12  4  page size (4096)
            +16 16  snapshot id (random; a diff names its base by this id)
            +32  4  kind: 0 full, 1 diff
            +36  4  number of sections n (1..MAX_SECTIONS)
            +40  8  file length in bytes (a truncated copy is refused)
            +48  4  crc32 of bytes 0 .. 64 + 64*n of this page, this field read as zero
            +52 12  reserved (zero)
            +64     n section entries of 64 bytes:
                    +0  16  name, ASCII, NUL-padded ("state", "extents", "memory")
                    +16  8  offset (page aligned)
                    +24  8  length in bytes
                    +32  4  checksum kind: 1 crc32 (in the first 4 bytes of the digest), 2 blake2b-256
                    +36  4  reserved
                    +40 24  digest (blake2b-256 is 32 bytes: its first 24 are kept)
    ...     sections, each starting on a page boundary, in table order

Sections:

* ``state``: the machine's state tree as JSON (:mod:`vnix.vmm.snapshot.codec`): configuration,
  vCPUs, irqchip, PIT, clock, devices, memory layout, and for a diff the base's id and path.
  blake2b-256. At most ``MAX_STATE_BYTES``.
* ``extents``: which guest RAM is stored, as (first page, page count) pairs of two u64, in
  ascending order, pages counted from the start of guest RAM (the regions of the memory layout
  laid end to end, so page p of region i is ``sum(sizes before i)/4096 + p``). blake2b-256. At
  most 16 bytes for every page of RAM.
* ``memory``: guest RAM. In a **full** snapshot the section is RAM laid end to end (byte b of
  RAM at section offset + b): pages outside the extents were never touched by anyone and are
  zero, left as holes in a sparse file, and ``mmap(MAP_PRIVATE)`` of the section at a region's
  offset gives that region's memory, loaded on demand and shared until written. In a **diff**
  snapshot the extents' pages are packed one after another; every other page is the base's.
  crc32 of the extents' bytes in extent order (holes are not read). Its length is at most the
  RAM size of the layout.

A reader checks, before it trusts anything: magic, version, page size, header crc32, section
count and names, each section inside the file and page aligned, the file's length, every
section's size limit, the state's and extents' digests; the memory digest when asked (reading
all of it), which :func:`read_memory_into` does anyway. Any failure is a :class:`SnapshotError`
with a one-line message.
"""
from __future__ import annotations

import os
import struct
import zlib
from _blake2 import blake2b  # hashlib would load OpenSSL: ~3 ms of a restore's start-up

from vnix.vmm.record import Record
from vnix.vmm.snapshot.errors import SnapshotError

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

MAGIC = b"VNIXSNP\0"
VERSION = 1
PAGE = 4096
HEADER = struct.Struct("<8sII16sIIQI12x")  # 64 bytes
ENTRY = struct.Struct("<16sQQII24s")  # 64 bytes
MAX_SECTIONS = 8
KIND_FULL, KIND_DIFF = 0, 1
CSUM_CRC32, CSUM_BLAKE2B = 1, 2
MAX_STATE_BYTES = 16 << 20
MAX_RAM_BYTES = 1 << 40
SECTION_NAMES = ("state", "extents", "memory")
_EXTENT = struct.Struct("<QQ")
assert HEADER.size == 64 and ENTRY.size == 64


def blake(data: bytes | memoryview) -> bytes:
    return blake2b(data, digest_size=32).digest()[:24]


def crc_digest(crc: int) -> bytes:
    return struct.pack("<I", crc & 0xFFFFFFFF) + bytes(20)


class Section(Record):
    __slots__ = ("name", "offset", "length", "csum_kind", "digest")

    def __init__(self, name: str, offset: int, length: int, csum_kind: int, digest: bytes) -> None:
        self.name, self.offset, self.length, self.csum_kind, self.digest = name, offset, length, csum_kind, digest


class Header(Record):
    __slots__ = ("snapshot_id", "kind", "file_length", "sections")

    def __init__(self, snapshot_id: bytes, kind: int, file_length: int, sections: dict[str, Section]) -> None:
        self.snapshot_id, self.kind, self.file_length, self.sections = snapshot_id, kind, file_length, sections

    @property
    def id_hex(self) -> str:
        return self.snapshot_id.hex()


def page_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def encode_extents(extents: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(_EXTENT.pack(first, count) for first, count in extents)


def decode_extents(raw: bytes, ram_pages: int) -> list[tuple[int, int]]:
    """Extents from their section, checked: ascending, not overlapping, inside RAM."""
    if len(raw) % _EXTENT.size:
        raise SnapshotError("snapshot extents section has a partial entry")
    out: list[tuple[int, int]] = []
    end = 0
    for first, count in _EXTENT.iter_unpack(raw):
        if count == 0 or first < end or first + count > ram_pages:
            raise SnapshotError(f"snapshot extent {first}+{count} is out of order or outside guest RAM "
                                f"({ram_pages} pages)")
        out.append((first, count))
        end = first + count
    return out


def runs(pages: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Sorted distinct page numbers -> (first, count) runs."""
    first = prev = -2
    for p in pages:
        if p == prev + 1:
            prev = p
            continue
        if first >= 0:
            yield first, prev - first + 1
        first = prev = p
    if first >= 0:
        yield first, prev - first + 1


class Writer:
    """Write sections one after another, then the header (at :meth:`finish`)."""

    def __init__(self, path: str, kind: int) -> None:
        self.path = path
        self.kind = kind
        self.snapshot_id = os.urandom(16)
        self.tmp = f"{path}.tmp.{os.getpid()}"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.pos = PAGE
        self.sections: list[Section] = []

    def add_bytes(self, name: str, data: bytes) -> None:
        offset = self.pos
        _pwrite_all(self.fd, data, offset)
        self.sections.append(Section(name, offset, len(data), CSUM_BLAKE2B, blake(data)))
        self.pos = page_up(offset + len(data))

    def add_memory(self, length: int, chunks: Iterable[tuple[int, memoryview]]) -> None:
        """``chunks``: (offset inside the section, bytes), in extent order; the rest are holes."""
        offset = self.pos
        crc = 0
        for at, data in chunks:
            _pwrite_all(self.fd, data, offset + at)
            crc = zlib.crc32(data, crc)
        self.sections.append(Section("memory", offset, length, CSUM_CRC32, crc_digest(crc)))
        self.pos = page_up(offset + length)

    def finish(self) -> Header:
        os.ftruncate(self.fd, self.pos)
        n = len(self.sections)
        head = bytearray(PAGE)
        HEADER.pack_into(head, 0, MAGIC, VERSION, PAGE, self.snapshot_id, self.kind, n, self.pos, 0)
        for i, s in enumerate(self.sections):
            ENTRY.pack_into(head, 64 + 64 * i, s.name.encode(), s.offset, s.length, s.csum_kind, 0, s.digest)
        struct.pack_into("<I", head, 48, zlib.crc32(head[: 64 + 64 * n]))
        _pwrite_all(self.fd, head, 0)
        os.close(self.fd)
        os.replace(self.tmp, self.path)
        return Header(self.snapshot_id, self.kind, self.pos, {s.name: s for s in self.sections})

    def abort(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def read_header(fd: int, path: str) -> Header:
    """The header page, checked (see the module docstring)."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, PAGE, 0)
    if len(head) < 64 or head[:8] != MAGIC:
        raise SnapshotError(f"{path} is not a vnix snapshot (bad magic)")
    magic, version, page, sid, kind, n, file_length, crc = HEADER.unpack_from(head, 0)
    if version != VERSION:
        raise SnapshotError(f"{path}: snapshot version {version}, this vnix reads version {VERSION}")
    if len(head) < PAGE:
        raise SnapshotError(f"{path} is truncated (header page incomplete)")
    if page != PAGE or kind not in (KIND_FULL, KIND_DIFF) or not 1 <= n <= MAX_SECTIONS:
        raise SnapshotError(f"{path}: snapshot header is corrupt (page {page}, kind {kind}, {n} sections)")
    check = bytearray(head[: 64 + 64 * n])
    check[48:52] = bytes(4)
    if zlib.crc32(check) != crc:
        raise SnapshotError(f"{path}: snapshot header checksum mismatch (corrupt)")
    if size != file_length:
        raise SnapshotError(f"{path} is truncated or padded: {size} bytes, header says {file_length}")
    sections: dict[str, Section] = {}
    for i in range(n):
        raw_name, offset, length, kind_c, _, digest = ENTRY.unpack_from(head, 64 + 64 * i)
        name = raw_name.rstrip(b"\0").decode("ascii", "replace")
        if name not in SECTION_NAMES or name in sections:
            raise SnapshotError(f"{path}: unknown or repeated snapshot section {name!r}")
        if offset % PAGE or offset < PAGE or offset + length > file_length or kind_c not in (CSUM_CRC32, CSUM_BLAKE2B):
            raise SnapshotError(f"{path}: snapshot section {name!r} lies outside the file or is misaligned")
        sections[name] = Section(name, offset, length, kind_c, digest)
    if "state" not in sections:
        raise SnapshotError(f"{path}: snapshot has no state section")
    if sections["state"].length > MAX_STATE_BYTES:
        raise SnapshotError(f"{path}: snapshot state is {sections['state'].length} bytes (limit {MAX_STATE_BYTES})")
    return Header(sid, kind, file_length, sections)


def read_section(fd: int, path: str, section: Section) -> bytes:
    """A small section (state, extents), its blake2b digest checked."""
    data = os.pread(fd, section.length, section.offset)
    if len(data) != section.length:
        raise SnapshotError(f"{path}: snapshot section {section.name!r} is truncated")
    if section.csum_kind != CSUM_BLAKE2B or blake(data) != section.digest:
        raise SnapshotError(f"{path}: snapshot section {section.name!r} checksum mismatch (corrupt)")
    return data


def memory_chunks(extents: list[tuple[int, int]], dense: bool) -> Iterator[tuple[int, int, int]]:
    """(ram byte offset, section byte offset, length) of each extent."""
    packed = 0
    for first, count in extents:
        at, n = first * PAGE, count * PAGE
        yield at, (at if dense else packed), n
        packed += n


def verify_memory(fd: int, path: str, section: Section, extents: list[tuple[int, int]], dense: bool) -> None:
    """Read the stored memory and check its crc32 (holes are not read)."""
    crc = 0
    for _, at, n in memory_chunks(extents, dense):
        for off in range(0, n, 8 << 20):
            chunk = os.pread(fd, min(8 << 20, n - off), section.offset + at + off)
            crc = zlib.crc32(chunk, crc)
    if crc_digest(crc) != section.digest:
        raise SnapshotError(f"{path}: snapshot memory checksum mismatch (corrupt)")
