"""The native VMM: one process per VM on /dev/kvm.

Error tree::

    VmmError
     ├── GuestMemoryError   an access outside guest RAM (guest-controlled addresses end here)
     ├── BootError          kernel / initrd / cmdline cannot be loaded   (also a UsageError)
     └── ConfigError        impossible machine configuration             (also a UsageError)
"""
from __future__ import annotations

from vnix.errors import UsageError, VnixError


class VmmError(VnixError):
    """Root of the native VMM's errors."""


class GuestMemoryError(VmmError):
    """An access that does not lie wholly inside guest RAM."""


class BootError(VmmError, UsageError):
    """The kernel, initrd or command line cannot be loaded."""

    exit_code = 2


class ConfigError(VmmError, UsageError):
    """The machine configuration is impossible (vCPUs, memory size, ...)."""

    exit_code = 2
