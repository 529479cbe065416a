"""The driver interface: what every hypervisor driver (native, qemu, fake) does.

One driver instance manages the VMs of one host. Methods take the VM's name and act
synchronously; long waits (graceful stop, migration) are bounded by a ``timeout`` or split into
phases the caller polls. Every method that acts on a VM checks its state first with
:func:`vnix.hypervisor.state.require`, so a call in the wrong state raises ``InvalidState``
naming both states.

Migration follows Ganeti's hypervisor shape, one call per phase, each side finalized with a
success flag so a failed migration leaves the source VM running::

    1. target: migrate_prepare_target(spec)      -> MigrationTarget (address to send to)
    2. source: migrate_send(name, target)          starts sending, returns at once
    3. source: migrate_status(name)               -> MigrationStatus (poll until not active)
    4. target: migrate_finalize_target(name, ok)   ok: the VM runs here; not ok: discarded
    5. source: migrate_finalize_source(name, ok)   ok: the source stops; not ok: it runs on
"""
from __future__ import annotations

import abc
from typing import ClassVar

from vnix.hypervisor.errors import Unsupported
from vnix.hypervisor.spec import (
    MigrationStatus,
    MigrationTarget,
    SnapshotInfo,
    VmInfo,
    VmSpec,
)
from vnix.hypervisor.state import VmState


class Hypervisor(abc.ABC):
    """Abstract driver. Subclasses set ``name`` and implement every abstract method."""

    name: ClassVar[str] = "abstract"

    # -- definitions --------------------------------------------------------------------
    @abc.abstractmethod
    def define(self, spec: VmSpec) -> None:
        """Record a VM (state DEFINED). Raises VmExists if the name is taken."""

    @abc.abstractmethod
    def spec(self, name: str) -> VmSpec:
        """The VM's definition. Raises NoSuchVm."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of all defined VMs, sorted."""

    @abc.abstractmethod
    def state(self, name: str) -> VmState:
        """The VM's actual state (a dead process shows as CRASHED)."""

    @abc.abstractmethod
    def destroy(self, name: str) -> None:
        """Stop the VM's process if any and forget the VM (run directory included)."""

    # -- lifecycle ----------------------------------------------------------------------
    @abc.abstractmethod
    def start(self, name: str) -> None:
        """Boot the VM (DEFINED/STOPPED/CRASHED -> RUNNING)."""

    @abc.abstractmethod
    def stop(self, name: str, timeout: float = 30.0) -> bool:
        """Ask the guest to power off (ACPI power button) and wait up to ``timeout`` seconds.

        Returns True if it stopped, False if it still runs (the caller may force_stop)."""

    @abc.abstractmethod
    def force_stop(self, name: str) -> None:
        """Pull the plug: the process is killed (-> STOPPED)."""

    @abc.abstractmethod
    def pause(self, name: str) -> None: ...

    @abc.abstractmethod
    def resume(self, name: str) -> None: ...

    @abc.abstractmethod
    def suspend(self, name: str) -> None:
        """Save the whole VM state to disk and end its process (-> SUSPENDED)."""

    @abc.abstractmethod
    def resume_from_disk(self, name: str) -> None:
        """Start the VM again from the state ``suspend`` saved (-> RUNNING)."""

    # -- information --------------------------------------------------------------------
    @abc.abstractmethod
    def info(self, name: str) -> VmInfo: ...

    @abc.abstractmethod
    def console_read(self, name: str, offset: int = 0) -> tuple[bytes, int]:
        """Serial output from byte ``offset`` on: (data, next offset). Poll to stream."""

    @abc.abstractmethod
    def console_write(self, name: str, data: bytes) -> None:
        """Type into the VM's serial console."""

    def console_lines(self, name: str, limit: int = 50) -> list[str]:
        """The last ``limit`` lines the VM printed (what a crash report shows)."""
        data, _ = self.console_read(name, 0)
        text = data.decode("utf-8", "replace").replace("\r", "")
        return text.splitlines()[-limit:] if limit > 0 else []

    def vnc_address(self, name: str) -> str | None:
        """Where the VM's VNC server listens ("unix:/path" or "host:port"), if it has one."""
        self.state(name)  # NoSuchVm for unknown names
        return None

    # -- memory and snapshots -----------------------------------------------------------
    def set_balloon(self, name: str, target_mib: int) -> None:
        """Ask the guest's balloon driver to leave it ``target_mib`` MiB of RAM."""
        raise Unsupported(self.name, "balloon")

    def snapshot(self, name: str, tag: str) -> SnapshotInfo:
        """Save the running VM's whole state under ``tag``; the VM keeps running."""
        raise Unsupported(self.name, "snapshot")

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        return []

    def revert(self, name: str, tag: str) -> None:
        """Replace the VM's state with snapshot ``tag`` (-> RUNNING)."""
        raise Unsupported(self.name, "revert to a snapshot")

    # -- migration (phases: see the module docstring) ----------------------------------
    def migrate_prepare_target(self, spec: VmSpec) -> MigrationTarget:
        raise Unsupported(self.name, "migrate")

    def migrate_send(self, name: str, target: MigrationTarget) -> None:
        raise Unsupported(self.name, "migrate")

    def migrate_status(self, name: str) -> MigrationStatus:
        raise Unsupported(self.name, "migrate")

    def migrate_finalize_source(self, name: str, success: bool) -> None:
        raise Unsupported(self.name, "migrate")

    def migrate_finalize_target(self, name: str, success: bool) -> None:
        raise Unsupported(self.name, "migrate")

    def close(self) -> None:
        """Release driver resources (never stops VMs: they outlive the agent)."""
