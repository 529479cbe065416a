"""The interface virtio-blk uses, and :func:`open_image`.

All offsets and lengths are in bytes of the virtual disk. ``readv``/``writev`` take host buffers
(memoryviews onto guest RAM from the GuestMemory door), so data moves without extra copies.
"""
from __future__ import annotations


from vnix.vmm.block import BlockError, OutOfRangeError, ReadOnlyError

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol
else:
    Protocol = object  # the interfaces below are for the type checker; at run time plain classes



class BlockImage(Protocol):
    size: int
    readonly: bool

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None: ...

    def writev(self, offset: int, bufs: Sequence[memoryview | bytes]) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def close(self) -> None: ...


def check_range(image: BlockImage, offset: int, length: int, write: bool) -> None:
    if offset < 0 or length < 0 or offset + length > image.size:
        raise OutOfRangeError(f"access {offset:#x}+{length:#x} past the disk's {image.size:#x} bytes")
    if write and image.readonly:
        raise ReadOnlyError("the disk is read-only")


def open_image(path: str, fmt: str = "raw", readonly: bool = False) -> BlockImage:
    """Open ``path`` as ``fmt`` ('raw' or 'qcow2'); BlockError if it cannot be used."""
    if fmt == "raw":
        from vnix.vmm.block.raw import RawImage

        return RawImage(path, readonly)
    if fmt == "qcow2":
        from vnix.vmm.block.qcow2 import Qcow2Image

        return Qcow2Image.open(path, readonly)
    raise BlockError(f"unknown disk format {fmt!r}")
