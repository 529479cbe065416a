"""A raw disk image: the file is the disk, byte for byte."""
from __future__ import annotations

import ctypes
import os

from vnix.vmm.block import BlockError
from vnix.vmm.block.image import check_range

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Sequence


FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a file range (reads then return zeros); False if the file system cannot."""
    return _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0


def preadv_full(fd: int, bufs: Sequence[memoryview], offset: int) -> None:
    """preadv until every buffer is full; bytes past end of file read as zeros."""
    bufs = [b for b in bufs if len(b)]
    while bufs:
        n = os.preadv(fd, bufs, offset)
        if n == 0:  # end of file: the rest of the disk is a hole
            for b in bufs:
                b[:] = bytes(len(b))
            return
        offset += n
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if n:
            bufs[0] = bufs[0][n:]


def pwritev_full(fd: int, bufs: Sequence[memoryview | bytes], offset: int) -> None:
    views = [memoryview(b) for b in bufs if len(b)]
    while views:
        n = os.pwritev(fd, views, offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


class RawImage:
    def __init__(self, path: str, readonly: bool = False) -> None:
        try:
            self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise BlockError(f"cannot open disk {path}: {exc.strerror}") from None
        self.path = path
        self.readonly = readonly
        self.size = os.fstat(self.fd).st_size

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        check_range(self, offset, sum(len(b) for b in bufs), False)
        preadv_full(self.fd, bufs, offset)

    def writev(self, offset: int, bufs: Sequence[memoryview | bytes]) -> None:
        check_range(self, offset, sum(len(b) for b in bufs), True)
        pwritev_full(self.fd, bufs, offset)

    def flush(self) -> None:
        if not self.readonly:
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        check_range(self, offset, length, True)
        if not punch_hole(self.fd, offset, length):
            self.write_zeroes(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        check_range(self, offset, length, True)
        chunk = bytes(min(length, 1 << 20))
        while length:
            n = min(length, len(chunk))
            pwritev_full(self.fd, [chunk[:n]], offset)
            offset += n
            length -= n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
