"""Hypervisor drivers: one interface (:class:`Hypervisor`), the ``qemu``, ``native`` and
``fake`` drivers behind it, and a registry (:func:`get_driver`) that picks one by name.

Errors: see :mod:`vnix.hypervisor.errors` (root :class:`HypervisorError`).
"""
from __future__ import annotations

from vnix.hypervisor.base import Hypervisor
from vnix.hypervisor.errors import (
    DriverUnavailable,
    HypervisorError,
    InvalidState,
    NoSuchVm,
    Unsupported,
    VmExists,
    VmProcessError,
)
from vnix.hypervisor.registry import driver_names, get_driver, register
from vnix.hypervisor.spec import (
    DiskInfo,
    DriverOptions,
    MigrationStatus,
    MigrationTarget,
    NicInfo,
    NicSpec,
    SnapshotInfo,
    VmInfo,
    VmSpec,
)
from vnix.hypervisor.state import ACTIONS, TRANSITIONS, VmState, require, transition

__all__ = [
    "ACTIONS", "TRANSITIONS", "DiskInfo", "DriverOptions", "DriverUnavailable", "Hypervisor",
    "HypervisorError", "InvalidState", "MigrationStatus", "MigrationTarget", "NicInfo",
    "NicSpec", "NoSuchVm", "SnapshotInfo", "Unsupported", "VmExists", "VmInfo",
    "VmProcessError", "VmSpec", "VmState", "driver_names", "get_driver", "register", "require",
    "transition",
]
