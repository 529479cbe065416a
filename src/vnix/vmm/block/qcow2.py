"""qcow2 images (QEMU docs/interop/qcow2.txt), versions 2 and 3, with a backing file.


Header (big-endian; version 3 adds the fields from 72)::

     0 magic "QFI\\xfb"   4 version   8 backing_file_offset (u64)   16 backing_file_size (u32)
    20 cluster_bits      24 size (u64, virtual bytes)   32 crypt_method (must be 0)
    36 l1_size           40 l1_table_offset (u64)       48 refcount_table_offset (u64)
    56 refcount_table_clusters   60 nb_snapshots   64 snapshots_offset (u64)
    72 incompatible_features (u64)  80 compatible (u64)  88 autoclear (u64)
    96 refcount_order    100 header_length   then header extensions (type u32, length u32,
    data padded to 8; type 0 ends them, 0xE2792ACA names the backing file's format)

Address translation: guest offset -> L1 index (offset >> (cluster_bits + l2_bits)) -> L2 table
(cluster-sized, u64 entries) -> data cluster. Entries: bits 9..55 host offset, bit 63 COPIED
(refcount exactly 1, may be written in place), bit 62 compressed (L2 only; then the entry
holds offset and sector count of a raw deflate stream), bit 0 "reads as zeros" (v3 L2).
An unallocated L2 entry reads from the backing file (or zeros past it / without one).

Refcounts: the refcount table (u64 offsets of refcount blocks), each block a cluster of
2^refcount_order-bit big-endian counts, one per host cluster.

Limits, checked at open: version 2 or 3, no encryption, no internal snapshots when writable,
no incompatible features (dirty, corrupt, external data file, extended L2, zstd), cluster size
512 B..2 MiB, L1 table and refcount table inside the file and of sane size, every table offset
cluster-aligned. Writes allocate at the end of the file (a fresh L2 table, then the data
cluster copied up from the backing file for the bytes not written: copy-on-write), then set the
refcount, then publish the L2/L1 entry, so a crash leaks clusters at worst.
"""
from __future__ import annotations

import os
import struct
import zlib

from vnix.vmm.block import BlockError, ImageFormatError
from vnix.vmm.block.image import BlockImage, check_range
from vnix.vmm.block.raw import preadv_full, pwritev_full

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Sequence

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset (72 bytes)
V3_HEADER = struct.Struct(">QQQII")  # incompatible .. header_length (32 bytes)
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
EXT_END, EXT_BACKING_FORMAT = 0, 0xE2792ACA
MAX_L1_BYTES = 32 << 20
MAX_BACKING_DEPTH = 16


class Qcow2Image:
    """A qcow2 image as a BlockImage."""

    def __init__(self, path: str, fd: int, readonly: bool, depth: int = 0) -> None:
        self.path, self.fd, self.readonly = path, fd, readonly
        self.backing: BlockImage | None = None
        self._read_header(depth)

    @classmethod
    def open(cls, path: str, readonly: bool = False, depth: int = 0) -> Qcow2Image:
        if depth > MAX_BACKING_DEPTH:
            raise ImageFormatError(f"{path}: backing chain deeper than {MAX_BACKING_DEPTH}")
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise BlockError(f"cannot open disk {path}: {exc.strerror}") from None
        try:
            return cls(path, fd, readonly, depth)
        except BaseException:
            os.close(fd)
            raise

    # -- header ---------------------------------------------------------------------------------
    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise ImageFormatError(f"{self.path}: {length} bytes at {offset:#x} are past the end of the file")
        return data

    def _read_header(self, depth: int) -> None:
        file_size = os.fstat(self.fd).st_size
        raw = os.pread(self.fd, 4096, 0)
        if len(raw) < HEADER.size or raw[:4] != MAGIC:
            raise ImageFormatError(f"{self.path}: not a qcow2 image")
        (_, self.version, backing_off, backing_len, self.cluster_bits, self.size, crypt, self.l1_size,
         self.l1_offset, self.rt_offset, rt_clusters, nb_snapshots, _) = HEADER.unpack_from(raw)
        if self.version not in (2, 3):
            raise ImageFormatError(f"{self.path}: qcow2 version {self.version} is not supported")
        if not 9 <= self.cluster_bits <= 21:
            raise ImageFormatError(f"{self.path}: cluster_bits {self.cluster_bits} out of range")
        if crypt:
            raise ImageFormatError(f"{self.path}: encrypted images are not supported")
        self.cluster = 1 << self.cluster_bits
        self.refcount_order, header_len = 4, 72
        if self.version == 3:
            incompatible, _, _, self.refcount_order, header_len = V3_HEADER.unpack_from(raw, 72)
            if incompatible:
                raise ImageFormatError(f"{self.path}: incompatible features {incompatible:#x} (dirty, corrupt, "
                                       "external data, zstd or extended L2) are not supported")
            if self.refcount_order > 6 or header_len < 104 or header_len > len(raw):
                raise ImageFormatError(f"{self.path}: bad refcount_order or header_length")
        if nb_snapshots and not self.readonly:
            raise ImageFormatError(f"{self.path}: images with internal snapshots can only be opened read-only")
        self.l2_bits = self.cluster_bits - 3
        l1_needed = -(-self.size // (self.cluster << self.l2_bits))
        if self.l1_size < l1_needed or self.l1_size * 8 > MAX_L1_BYTES:
            raise ImageFormatError(f"{self.path}: L1 table of {self.l1_size} entries for {self.size} bytes")
        for name, off in (("L1 table", self.l1_offset), ("refcount table", self.rt_offset)):
            if off % self.cluster or off >= file_size:
                raise ImageFormatError(f"{self.path}: {name} offset {off:#x} misaligned or past the end")
        self.l1 = list(struct.unpack(f">{self.l1_size}Q", self._pread(self.l1_offset, 8 * self.l1_size)))
        self.rt_entries = rt_clusters * self.cluster // 8
        if rt_clusters * self.cluster > MAX_L1_BYTES:
            raise ImageFormatError(f"{self.path}: refcount table too large")
        self.rt = list(struct.unpack(f">{self.rt_entries}Q", self._pread(self.rt_offset, 8 * self.rt_entries)))
        self.rc_bits = 1 << self.refcount_order
        self.rc_per_block = self.cluster * 8 // self.rc_bits
        self.end = -(-file_size // self.cluster) * self.cluster  # next free cluster
        self._l2_cache: dict[int, list[int]] = {}
        backing_format = None
        pos = header_len if self.version == 3 else 72
        while pos + 8 <= len(raw):
            ext_type, ext_len = struct.unpack_from(">II", raw, pos)
            if ext_type == EXT_END:
                break
            if ext_type == EXT_BACKING_FORMAT:
                backing_format = raw[pos + 8 : pos + 8 + ext_len].decode("ascii", "replace")
            pos += 8 + (ext_len + 7) // 8 * 8
        self.backing_file = None
        if backing_off:
            if backing_len > 1023:
                raise ImageFormatError(f"{self.path}: backing file name too long")
            name = self._pread(backing_off, backing_len).decode("utf-8", "replace")
            self.backing_file = name if name.startswith("/") else os.path.join(os.path.dirname(self.path), name)
            fmt = backing_format or _probe(self.backing_file)
            if fmt == "qcow2":
                self.backing = Qcow2Image.open(self.backing_file, True, depth + 1)
            elif fmt == "raw":
                from vnix.vmm.block.raw import RawImage

                self.backing = RawImage(self.backing_file, readonly=True)
            else:
                raise ImageFormatError(f"{self.path}: backing format {fmt!r} is not supported")

    # -- tables ----------------------------------------------------------------------------------
    def _l2(self, l2_offset: int) -> list[int]:
        table = self._l2_cache.get(l2_offset)
        if table is None:
            if l2_offset % self.cluster:
                raise ImageFormatError(f"{self.path}: L2 table at {l2_offset:#x} is misaligned")
            n = 1 << self.l2_bits
            table = list(struct.unpack(f">{n}Q", self._pread(l2_offset, 8 * n)))
            if len(self._l2_cache) > 256:
                self._l2_cache.clear()
            self._l2_cache[l2_offset] = table
        return table

    def _lookup(self, offset: int) -> tuple[int, int, int]:
        """(l1 index, l2 index, L2 entry or 0)."""
        cluster_index = offset >> self.cluster_bits
        l1i, l2i = cluster_index >> self.l2_bits, cluster_index & ((1 << self.l2_bits) - 1)
        l2_offset = self.l1[l1i] & L1_OFFSET_MASK
        if not l2_offset:
            return l1i, l2i, 0
        return l1i, l2i, self._l2(l2_offset)[l2i]

    # -- reading ---------------------------------------------------------------------------------
    def _read_cluster_part(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the guest bytes at ``offset`` (all inside one cluster)."""
        _, _, entry = self._lookup(offset)
        within = offset & (self.cluster - 1)
        if entry & OFLAG_COMPRESSED:
            view[:] = self._decompress(entry)[within : within + len(view)]
        elif entry & L1_OFFSET_MASK and not (entry & OFLAG_ZERO and self.version == 3):
            preadv_full(self.fd, [view], (entry & L1_OFFSET_MASK) + within)
        elif entry & OFLAG_ZERO and self.version == 3:
            view[:] = bytes(len(view))
        else:
            self._read_backing(offset, view)

    def _read_backing(self, offset: int, view: memoryview) -> None:
        n = len(view)
        have = 0 if self.backing is None else max(0, min(n, self.backing.size - offset))
        if have:
            self.backing.readv(offset, [view[:have]])  # type: ignore[union-attr]
        if have < n:
            view[have:] = bytes(n - have)

    def _decompress(self, entry: int) -> bytes:
        x = 62 - (self.cluster_bits - 8)  # qcow2.txt "Compressed Clusters Descriptor"
        host = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
        raw = os.pread(self.fd, sectors * 512 - (host & 511), host)
        try:
            return zlib.decompressobj(-12).decompress(raw, self.cluster).ljust(self.cluster, b"\0")
        except zlib.error as exc:
            raise ImageFormatError(f"{self.path}: bad compressed cluster at {host:#x}: {exc}") from None

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        check_range(self, offset, sum(len(b) for b in bufs), False)
        for buf in bufs:
            pos = 0
            while pos < len(buf):
                n = min(len(buf) - pos, self.cluster - ((offset + pos) & (self.cluster - 1)))
                self._read_cluster_part(offset + pos, buf[pos : pos + n])
                pos += n
            offset += len(buf)

    # -- allocation and refcounts ----------------------------------------------------------------
    def _alloc_cluster(self) -> int:
        host = self.end
        self.end += self.cluster
        os.ftruncate(self.fd, self.end)
        self._set_refcount(host, 1)
        return host

    def _set_refcount(self, host: int, value: int) -> None:
        index = host >> self.cluster_bits
        rti, slot = divmod(index, self.rc_per_block)
        if rti >= self.rt_entries:
            raise BlockError(f"{self.path}: refcount table full (growing it is not implemented)")
        block = self.rt[rti] & L1_OFFSET_MASK
        if not block:  # a new refcount block, placed at the end; it counts itself if it can
            block = self.end
            self.end += self.cluster
            os.ftruncate(self.fd, self.end)
            self.rt[rti] = block
            bidx = block >> self.cluster_bits
            if bidx // self.rc_per_block == rti:
                self._write_refcount_entry(block, bidx % self.rc_per_block, 1)
            else:
                self._set_refcount(block, 1)
            os.pwrite(self.fd, struct.pack(">Q", block), self.rt_offset + 8 * rti)
        self._write_refcount_entry(block, slot, value)

    def _write_refcount_entry(self, block: int, slot: int, value: int) -> None:
        bits = self.rc_bits
        if bits >= 8:
            os.pwrite(self.fd, value.to_bytes(bits // 8, "big"), block + slot * bits // 8)
            return
        byte_at = block + slot * bits // 8
        old = os.pread(self.fd, 1, byte_at)[0]
        shift = (slot * bits) % 8  # qcow2.txt: sub-byte refcounts fill each byte from bit 0
        mask = ((1 << bits) - 1) << shift
        os.pwrite(self.fd, bytes([(old & ~mask) | (value << shift & mask)]), byte_at)

    def _l2_for_write(self, l1i: int) -> int:
        entry = self.l1[l1i]
        l2_offset = entry & L1_OFFSET_MASK
        if l2_offset and entry & OFLAG_COPIED:
            return l2_offset
        if l2_offset:
            raise ImageFormatError(f"{self.path}: shared L2 table (internal snapshot): not writable")
        l2_offset = self._alloc_cluster()
        os.pwrite(self.fd, bytes(self.cluster), l2_offset)
        self._l2_cache[l2_offset] = [0] * (1 << self.l2_bits)
        self.l1[l1i] = l2_offset | OFLAG_COPIED
        os.pwrite(self.fd, struct.pack(">Q", self.l1[l1i]), self.l1_offset + 8 * l1i)
        return l2_offset

    def _set_l2(self, l2_offset: int, l2i: int, value: int) -> None:
        self._l2(l2_offset)[l2i] = value
        os.pwrite(self.fd, struct.pack(">Q", value), l2_offset + 8 * l2i)

    # -- writing -----------------------------------------------------------------------------------
    def _write_cluster_part(self, offset: int, data: memoryview | bytes | None) -> None:
        """Write ``data`` (None: zeros) inside one cluster, allocating it with COW if needed."""
        length = len(data) if data is not None else 0
        l1i, l2i, entry = self._lookup(offset)
        within = offset & (self.cluster - 1)
        host = entry & L1_OFFSET_MASK
        if host and entry & OFLAG_COPIED and not entry & (OFLAG_COMPRESSED | OFLAG_ZERO):
            pwritev_full(self.fd, [data], host + within)  # type: ignore[list-item]
            return
        if entry & OFLAG_COMPRESSED or (host and not entry & OFLAG_COPIED):
            raise ImageFormatError(f"{self.path}: writing over compressed/shared clusters is not supported")
        base = self.cluster_base(offset)
        full = bytearray(self.cluster)
        if not (entry & OFLAG_ZERO and self.version == 3) and length < self.cluster:
            self._read_backing(base, memoryview(full))  # copy-on-write from the backing file
        full[within : within + length] = data  # type: ignore[index]
        l2_offset = self._l2_for_write(l1i)
        new = self._alloc_cluster()
        os.pwrite(self.fd, full, new)
        self._set_l2(l2_offset, l2i, new | OFLAG_COPIED)

    def cluster_base(self, offset: int) -> int:
        return offset & ~(self.cluster - 1)

    def writev(self, offset: int, bufs: Sequence[memoryview | bytes]) -> None:
        check_range(self, offset, sum(len(b) for b in bufs), True)
        for buf in bufs:
            view = memoryview(buf)
            pos = 0
            while pos < len(view):
                n = min(len(view) - pos, self.cluster - ((offset + pos) & (self.cluster - 1)))
                self._write_cluster_part(offset + pos, view[pos : pos + n])
                pos += n
            offset += len(view)

    def write_zeroes(self, offset: int, length: int) -> None:
        check_range(self, offset, length, True)
        end = offset + length
        while offset < end:
            n = min(end - offset, self.cluster - (offset & (self.cluster - 1)))
            self._write_cluster_part(offset, bytes(n))
            offset += n

    def discard(self, offset: int, length: int) -> None:
        """Reads of a discarded range return zeros here (as write-zeroes: simple and exact)."""
        self.write_zeroes(offset, length)

    def flush(self) -> None:
        if not self.readonly:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _probe(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == MAGIC else "raw"
    except OSError as exc:
        raise BlockError(f"backing file {path}: {exc.strerror}") from None


