"""Which kind of kernel a file is, and turning a packaged kernel into one a board boots directly.

Magics, from the kernels' own boot documentation:

* x86 bzImage: 0xAA55 at 0x1FE and ``HdrS`` at 0x202 (Documentation/arch/x86/boot.rst,
  "The real-mode kernel header").
* ELF (PVH entry, vmlinux): ``\\x7fELF`` at 0.
* arm64 Image: the 64-byte header of Documentation/arch/arm64/booting.rst, magic
  ``ARM\\x64`` (0x644d5241 little-endian) at 0x38. Debian's arm64 ``vmlinuz`` is this Image with
  an EFI stub (``MZ`` at 0), uncompressed; QEMU's ``-kernel`` loads it as is.
* arm64 EFI zboot (``CONFIG_EFI_ZBOOT``, drivers/firmware/efi/libstub/zboot-header.S): ``MZ``
  at 0, ``zimg`` at 4, payload offset (u32) at 8, payload size (u32) at 12, the compression
  name (``gzip``, ``xz``, ...) NUL-padded at 0x18. QEMU 7.2 does not unpack it, so the builder
  does. A plain gzip file (``\\x1f\\x8b``) is the older ``Image.gz`` form.
"""
from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Literal

from vnix.images import ImageError

KernelKind = Literal["bzImage", "elf", "arm64-image", "arm64-zboot", "gzip"]
ARM64_MAGIC = b"ARM\x64"
HEAD_BYTES = 0x206

# which guest architecture boots each directly bootable kind
KIND_ARCH: dict[str, str] = {"bzImage": "x86_64", "elf": "x86_64", "arm64-image": "aarch64"}


def kernel_kind(head: bytes) -> KernelKind | None:
    """The kind of kernel whose first :data:`HEAD_BYTES` bytes are ``head``; None if unknown."""
    if head[:4] == b"\x7fELF":
        return "elf"
    if len(head) >= 0x206 and head[0x1FE:0x200] == b"\x55\xaa" and head[0x202:0x206] == b"HdrS":
        return "bzImage"
    if len(head) >= 0x3C and head[0x38:0x3C] == ARM64_MAGIC:
        return "arm64-image"
    if head[:2] == b"MZ" and head[4:8] == b"zimg":
        return "arm64-zboot"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    return None


def read_kind(path: Path | str) -> KernelKind | None:
    try:
        with open(path, "rb") as f:
            return kernel_kind(f.read(HEAD_BYTES))
    except OSError as exc:
        raise ImageError(f"cannot read kernel {path}: {exc.strerror}") from None


def _inflate(data: bytes, method: str, what: str) -> bytes:
    try:
        if method == "gzip":
            return gzip.decompress(data)
        if method in ("xz", "lzma"):
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ImageError(f"cannot decompress {what} ({method}): {exc}") from None
    raise ImageError(f"{what} is compressed with {method}, which the builder cannot unpack "
                     "(gzip and xz are supported)")


def arm64_image(data: bytes, what: str = "kernel") -> bytes:
    """An arm64 kernel as packaged (Image, Image.gz or EFI zboot) -> the plain Image."""
    kind = kernel_kind(data[:HEAD_BYTES])
    if kind == "gzip":
        data = _inflate(data, "gzip", what)
    elif kind == "arm64-zboot":
        offset, size = struct.unpack_from("<II", data, 8)
        method = data[0x18:0x38].split(b"\0", 1)[0].decode(errors="replace")
        if offset + size > len(data):
            raise ImageError(f"{what}: EFI zboot payload runs past the end of the file")
        data = _inflate(data[offset:offset + size], method, what)
    if kernel_kind(data[:HEAD_BYTES]) != "arm64-image":
        raise ImageError(f"{what} is not an arm64 Linux Image (no ARM\\x64 magic at 0x38)")
    return data
