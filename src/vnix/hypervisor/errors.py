"""The hypervisor drivers' errors.

Error tree::

    VnixError
     └── HypervisorError           root of every driver error
          ├── NoSuchVm             no VM of that name is defined on this driver
          ├── VmExists             a VM of that name is already defined
          ├── InvalidState         the VM is in a state that does not allow the action
          │                        (names the current and the required states)
          ├── Unsupported          this driver cannot do that (says which driver and why)
          ├── DriverUnavailable    the driver's software is missing (qemu binary, /dev/kvm)
          └── VmProcessError       the VM's process failed to start or answer (QMP errors)

``NoSuchVm``, ``VmExists`` and ``InvalidState`` are also :class:`~vnix.errors.UsageError`: a
user asked for something impossible, so the CLI exits with status 2 and the agent answers 404/409.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from vnix.errors import UsageError, VnixError

if TYPE_CHECKING:
    from vnix.hypervisor.state import VmState


class HypervisorError(VnixError):
    """Root of the hypervisor drivers' errors."""


class NoSuchVm(HypervisorError, UsageError):
    exit_code = 2

    def __init__(self, name: str) -> None:
        super().__init__(f"no VM named {name!r}")
        self.name = name


class VmExists(HypervisorError, UsageError):
    exit_code = 2

    def __init__(self, name: str) -> None:
        super().__init__(f"a VM named {name!r} already exists")
        self.name = name


class InvalidState(HypervisorError, UsageError):
    """The action needs one of ``required`` but the VM is ``current``."""

    exit_code = 2

    def __init__(
        self, name: str, action: str, current: VmState, required: Iterable[VmState]
    ) -> None:
        self.name = name
        self.action = action
        self.current = current
        self.required = tuple(required)
        wanted = " or ".join(s.value for s in self.required)
        super().__init__(f"cannot {action} VM {name!r}: it is {current.value}, needs {wanted}")


class Unsupported(HypervisorError):
    def __init__(self, driver: str, action: str, why: str = "") -> None:
        self.driver = driver
        self.action = action
        msg = f"the {driver} driver cannot {action}"
        super().__init__(f"{msg}: {why}" if why else msg)


class DriverUnavailable(HypervisorError):
    """The driver's software (a binary, /dev/kvm) is missing on this host."""


class VmProcessError(HypervisorError):
    """The VM's process failed to start, died, or its control channel failed."""
