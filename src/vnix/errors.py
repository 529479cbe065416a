"""The root of every vnix error.

Each package has one root exception that derives from :class:`VnixError`::

    VnixError
     ├── UsageError            bad user input (CLI, API, XML, image files): exit status 2
     ├── vnix.kvm.KvmError     a KVM ioctl failed (operation + errno)
     ├── vnix.vmm.VmmError     the native VMM
     │    ├── GuestMemoryError an access outside guest RAM
     │    ├── BootError        the kernel/initrd cannot be loaded (a UsageError too)
     │    └── ConfigError      an impossible machine configuration (a UsageError too)
     └── vnix.images.ImageError building or reading guest images

Errors from below (OSError, ctypes, subprocess) are translated at the package boundary into the
most specific error here; the CLI prints ``str(error)`` on one line and exits with ``exit_code``.
"""
from __future__ import annotations


class VnixError(Exception):
    """Root of all vnix errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(VnixError):
    """The user asked for something impossible or gave a bad file: exit status 2."""

    exit_code = 2
