"""Pick a driver by name: ``get_driver("qemu", run_dir=...)``.

Drivers register their class here when their module is imported; the registry imports the
built-in drivers lazily so that using the fake never imports QEMU's libraries.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from vnix.errors import UsageError
from vnix.hypervisor.errors import HypervisorError

if TYPE_CHECKING:
    from vnix.hypervisor.base import Hypervisor

_BUILTIN = {
    "fake": "vnix.hypervisor.fake:FakeHypervisor",
    "qemu": "vnix.hypervisor.qemu:QemuHypervisor",
    "native": "vnix.hypervisor.native:NativeHypervisor",
}
_extra: dict[str, type[Hypervisor]] = {}


class UnknownDriver(HypervisorError, UsageError):
    exit_code = 2


def register(name: str, cls: type[Hypervisor]) -> None:
    _extra[name] = cls


def driver_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_extra))


def driver_class(name: str) -> type[Hypervisor]:
    if name in _extra:
        return _extra[name]
    if name not in _BUILTIN:
        raise UnknownDriver(
            f"unknown hypervisor driver {name!r} (choose from {', '.join(driver_names())})"
        )
    module, _, attr = _BUILTIN[name].partition(":")
    cls: type[Hypervisor] = getattr(importlib.import_module(module), attr)
    return cls


def get_driver(name: str, run_dir: Path | str) -> Hypervisor:
    """A driver instance keeping its VMs' run directories under ``run_dir``."""
    return driver_class(name)(Path(run_dir))  # type: ignore[call-arg]
