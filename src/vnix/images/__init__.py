"""Guest images: the tiny Linux guests (x86_64, aarch64) built from Debian's packages, and
where images live.

Error tree::

    ImageError              building or reading an image failed (exit status 1)
     └── UnknownImageError  the user named an image that does not exist (a UsageError: status 2)

Public surface::

    vnix.images.store      vnix_home(), image_dir(name), load_image(name) -> GuestImage
    vnix.images.tiny       build_tiny(..., arch="x86_64"|"aarch64") -> BuildResult, TINY_CMDLINE
    vnix.images.arches     GuestArch per guest ISA (image name, Debian arch, console), ARCHES
    vnix.images.bootkernel kernel_kind(head), arm64_image(data): kernel magics and unpacking
    vnix.images.debian     Apt (host's, or a private state for another arch), resolve, download
    vnix.images.guest_init encode_command(argv), READY_PREFIX, END_MARKER, parse_end_marker(line)
    vnix.images.cpio       CpioWriter (cpio "newc" without root)
    vnix.images.kmod       module dependency closure from the .ko files themselves
"""
from __future__ import annotations

from vnix.errors import UsageError, VnixError


class ImageError(VnixError):
    """Building or reading a guest image failed."""


class UnknownImageError(ImageError, UsageError):
    """No image by that name (or it was never built)."""

    exit_code = 2


__all__ = ["ImageError", "UnknownImageError"]
