"""Disk images for virtio-blk: raw files and qcow2 (with backing files).

Error tree::

    BlockError                 (a VmmError)
     ├── ImageFormatError      the file is not a valid image of its format (header, tables)
     ├── ReadOnlyError         a write to a read-only image
     └── OutOfRangeError       an access past the end of the virtual disk
"""
from __future__ import annotations

from vnix.vmm import VmmError


class BlockError(VmmError):
    """Root of the block package's errors."""


class ImageFormatError(BlockError):
    """The image is corrupt or uses a feature vnix does not implement."""


class ReadOnlyError(BlockError):
    """A write, discard or write-zeroes on a read-only image."""


class OutOfRangeError(BlockError):
    """An access past the end of the virtual disk."""


__all__ = ["BlockError", "ImageFormatError", "ReadOnlyError", "OutOfRangeError"]
