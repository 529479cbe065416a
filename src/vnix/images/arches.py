"""The guest architectures the tiny image is built for, and the facts that differ between them.

One table, read by the builder (which Debian packages, which console device node), the image
store (which image names exist) and ``vnix run`` (which machine boots an image)::

    arch      dpkg   image        console   board (QEMU)          boot kernel
    x86_64    amd64  tiny         ttyS0     pc (16550 UART)       bzImage
    aarch64   arm64  tiny-arm64   ttyAMA0   virt (PL011 UART)     arm64 Image (EFI stub)

The console's character device numbers are from Documentation/admin-guide/devices.txt:
major 4 minor 64 is ttyS0, major 204 minor 64 is ttyAMA0 (the "low-density serial ports").
"""
from __future__ import annotations

import platform
from dataclasses import dataclass

from vnix.images import UnknownImageError


@dataclass(frozen=True)
class GuestArch:
    name: str  # what `uname -m` prints in the guest
    debian: str  # Debian's architecture name (dpkg --print-architecture)
    image: str  # the name of the tiny image built for it
    console: str  # the board's first serial port, as Linux names it
    console_node: tuple[int, int]  # (major, minor) of /dev/<console>

    @property
    def kernel_meta(self) -> str:
        """The metapackage that depends on the current kernel: linux-image-amd64, -arm64."""
        return f"linux-image-{self.debian}"

    @property
    def cmdline(self) -> str:
        # serial console; no reboot loop after a panic (QEMU runs with -no-reboot, so panic=-1
        # ends the VM at once); quiet so the console carries our lines.
        return f"console={self.console} panic=-1 quiet loglevel=3"


X86_64 = GuestArch("x86_64", "amd64", "tiny", "ttyS0", (4, 64))
AARCH64 = GuestArch("aarch64", "arm64", "tiny-arm64", "ttyAMA0", (204, 64))
ARCHES: dict[str, GuestArch] = {a.name: a for a in (X86_64, AARCH64)}
IMAGES: dict[str, GuestArch] = {a.image: a for a in ARCHES.values()}


def get_arch(name: str) -> GuestArch:
    try:
        return ARCHES[name]
    except KeyError:
        raise UnknownImageError(
            f"unknown architecture {name!r} (known: {', '.join(ARCHES)})") from None


def host_arch() -> str:
    """This machine's architecture in ``uname -m`` terms (x86_64, aarch64)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
