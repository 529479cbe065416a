"""A complete in-memory driver, for tests without any virtualisation software (Ganeti's habit).

Every method of :class:`~vnix.hypervisor.base.Hypervisor` works and follows the same state
machine as the real drivers: VMs "boot" by printing lines on their console, echo what is typed,
balloon, suspend, snapshot, and migrate between two ``FakeHypervisor`` instances in the same
process. Test helpers: :meth:`FakeHypervisor.crash` makes a VM's "process" die.
"""
from __future__ import annotations

import copy
import itertools
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from vnix.hypervisor.base import Hypervisor
from vnix.hypervisor.errors import HypervisorError, InvalidState, NoSuchVm, VmExists
from vnix.hypervisor.spec import (
    DiskInfo,
    MigrationStatus,
    MigrationTarget,
    NicInfo,
    SnapshotInfo,
    VmInfo,
    VmSpec,
)
from vnix.hypervisor.state import VmState, require, transition

S = VmState


@dataclass
class _FakeVm:
    spec: VmSpec
    state: VmState = S.DEFINED
    console: bytearray = field(default_factory=bytearray)
    pid: int | None = None
    started_at: float = 0.0
    cpu_before: float = 0.0  # cpu time of earlier runs
    balloon_mib: int | None = None
    saved: dict[str, object] | None = None  # what suspend wrote "to disk"
    snapshots: dict[str, tuple[SnapshotInfo, dict[str, object]]] = field(default_factory=dict)
    migration: MigrationStatus = field(default_factory=lambda: MigrationStatus("none"))
    detail: str = ""


class FakeHypervisor(Hypervisor):
    name = "fake"
    _instances: ClassVar[weakref.WeakValueDictionary[str, FakeHypervisor]] = (
        weakref.WeakValueDictionary()
    )
    _ids = itertools.count(1)
    _pids = itertools.count(40000)

    def __init__(self, run_dir: Path | str | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.instance_id = f"fake{next(self._ids)}"
        self._vms: dict[str, _FakeVm] = {}
        self._lock = threading.RLock()
        FakeHypervisor._instances[self.instance_id] = self

    # -- helpers --------------------------------------------------------------------------
    def _vm(self, name: str) -> _FakeVm:
        try:
            return self._vms[name]
        except KeyError:
            raise NoSuchVm(name) from None

    def _set(self, vm: _FakeVm, new: VmState, action: str) -> None:
        vm.state = transition(vm.spec.name, vm.state, new, action)

    def _print(self, vm: _FakeVm, line: str) -> None:
        vm.console += (line + "\r\n").encode()

    def _boot(self, vm: _FakeVm, how: str) -> None:
        vm.pid = next(self._pids)
        vm.started_at = time.monotonic()
        vm.detail = ""
        self._print(vm, f"fake: {how} {vm.spec.name} ({vm.spec.config.memory_mib} MiB, "
                        f"{vm.spec.config.cpus} vCPU)")

    def _halt(self, vm: _FakeVm) -> None:
        if vm.started_at:
            vm.cpu_before += time.monotonic() - vm.started_at
        vm.started_at = 0.0
        vm.pid = None

    def _memory_image(self, vm: _FakeVm) -> dict[str, object]:
        return {"console": bytes(vm.console), "balloon_mib": vm.balloon_mib,
                "cpu": vm.cpu_before + (time.monotonic() - vm.started_at if vm.started_at else 0)}

    def _load_image(self, vm: _FakeVm, image: dict[str, object]) -> None:
        vm.console = bytearray(image["console"])  # type: ignore[arg-type]
        vm.balloon_mib = image["balloon_mib"]  # type: ignore[assignment]
        vm.cpu_before = float(image["cpu"])  # type: ignore[arg-type]

    # -- definitions ----------------------------------------------------------------------
    def define(self, spec: VmSpec) -> None:
        with self._lock:
            if spec.name in self._vms:
                raise VmExists(spec.name)
            self._vms[spec.name] = _FakeVm(spec=copy.deepcopy(spec))

    def spec(self, name: str) -> VmSpec:
        return copy.deepcopy(self._vm(name).spec)

    def list(self) -> list[str]:
        return sorted(self._vms)

    def state(self, name: str) -> VmState:
        return self._vm(name).state

    def destroy(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            self._halt(vm)
            del self._vms[name]

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "start")
            self._set(vm, S.RUNNING, "start")
            self._boot(vm, "booting")
            self._print(vm, f"{name} login:")

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "stop")
            if vm.state == S.PAUSED:
                return False  # a paused guest cannot answer the power button
            self._print(vm, "fake: ACPI power button, powering off")
            self._halt(vm)
            self._set(vm, S.STOPPED, "stop")
            return True

    def force_stop(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "force-stop")
            self._halt(vm)
            self._set(vm, S.STOPPED, "force-stop")

    def pause(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "pause")
            self._set(vm, S.PAUSED, "pause")

    def resume(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "resume")
            self._set(vm, S.RUNNING, "resume")

    def suspend(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "suspend")
            vm.saved = self._memory_image(vm)
            self._halt(vm)
            self._set(vm, S.SUSPENDED, "suspend")

    def resume_from_disk(self, name: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "resume-from-disk")
            assert vm.saved is not None
            self._load_image(vm, vm.saved)
            vm.saved = None
            self._set(vm, S.RUNNING, "resume-from-disk")
            self._boot(vm, "restored")

    # -- information ----------------------------------------------------------------------
    def info(self, name: str) -> VmInfo:
        vm = self._vm(name)
        cfg = vm.spec.config
        running = vm.started_at and vm.state in (S.RUNNING, S.MIGRATING)
        return VmInfo(
            name=name, uuid=vm.spec.uuid, driver=self.name, state=vm.state, pid=vm.pid,
            cpus=cfg.cpus,
            cpu_time_s=vm.cpu_before + (time.monotonic() - vm.started_at if running else 0.0),
            memory_mib=cfg.memory_mib,
            balloon_mib=(vm.balloon_mib or cfg.memory_mib) if vm.pid else None,
            rss_mib=float(vm.balloon_mib or cfg.memory_mib) if vm.pid else None,
            disks=[DiskInfo(f"vd{chr(97 + i)}", d.path, d.format, d.readonly)
                   for i, d in enumerate(cfg.disks)],
            nics=[NicInfo(n.network, n.mac, n.tap, n.ip) for n in vm.spec.nics],
            exit_counters={"io": 0, "mmio": 0, "hlt": 0} if vm.pid else None,
            detail=vm.detail,
        )

    def console_read(self, name: str, offset: int = 0) -> tuple[bytes, int]:
        vm = self._vm(name)
        data = bytes(vm.console[offset:])
        return data, offset + len(data)

    def console_write(self, name: str, data: bytes) -> None:
        with self._lock:
            vm = self._vm(name)
            if vm.state != S.RUNNING:
                raise InvalidState(name, "type on the console of", vm.state, [S.RUNNING])
            vm.console += data.replace(b"\r", b"\r\n")  # the fake guest's tty echoes

    # -- memory and snapshots -------------------------------------------------------------
    def set_balloon(self, name: str, target_mib: int) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "balloon")
            if not 1 <= target_mib <= vm.spec.config.memory_mib:
                raise HypervisorError(
                    f"balloon target {target_mib} MiB is outside 1..{vm.spec.config.memory_mib}"
                )
            vm.balloon_mib = target_mib

    def snapshot(self, name: str, tag: str) -> SnapshotInfo:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "snapshot")
            image = self._memory_image(vm)
            snap = SnapshotInfo(tag, f"fake:{name}/{tag}", time.time(), len(vm.console))
            vm.snapshots[tag] = (snap, image)
            return snap

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        return [s for s, _ in self._vm(name).snapshots.values()]

    def revert(self, name: str, tag: str) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "revert")
            if tag not in vm.snapshots:
                raise HypervisorError(f"VM {name!r} has no snapshot {tag!r}")
            self._halt(vm)
            self._load_image(vm, vm.snapshots[tag][1])
            vm.state = S.RUNNING  # a revert replaces the state wholesale, whatever it was
            self._boot(vm, "reverted")

    def crash(self, name: str, message: str = "fake: kernel panic") -> None:
        """Test helper: the VM's process dies."""
        with self._lock:
            vm = self._vm(name)
            self._print(vm, message)
            self._halt(vm)
            self._set(vm, S.CRASHED, "crash")
            vm.detail = "process died"

    # -- migration ------------------------------------------------------------------------
    def migrate_prepare_target(self, spec: VmSpec) -> MigrationTarget:
        with self._lock:
            if spec.name not in self._vms:
                self.define(spec)
            vm = self._vm(spec.name)
            self._set(vm, S.INCOMING, "prepare a migration target for")
            return MigrationTarget(spec.name, f"fake:{self.instance_id}", self.name)

    def migrate_send(self, name: str, target: MigrationTarget) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "migrate")
            other = self._instances.get(target.address.removeprefix("fake:"))
            if target.driver != self.name or other is None or other is self:
                vm.migration = MigrationStatus("failed", error=f"no target at {target.address}")
                return
            dest = other._vms.get(target.vm)
            if dest is None or dest.state != S.INCOMING:
                vm.migration = MigrationStatus("failed", error="target is not waiting")
                return
            was_paused = vm.state == S.PAUSED
            self._set(vm, S.MIGRATING, "migrate")
            image = self._memory_image(vm)
            size = vm.spec.config.memory_mib * 1024 * 1024
            other._load_image(dest, image)
            dest.saved = {"paused": was_paused}
            vm.migration = MigrationStatus("completed", size, 0, size)

    def migrate_status(self, name: str) -> MigrationStatus:
        return copy.copy(self._vm(name).migration)

    def migrate_finalize_source(self, name: str, success: bool) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "finalize-source")
            if success:
                self._halt(vm)
                self._set(vm, S.STOPPED, "finalize migration of")
            else:
                self._set(vm, S.RUNNING, "finalize migration of")
            vm.migration = MigrationStatus("none")

    def migrate_finalize_target(self, name: str, success: bool) -> None:
        with self._lock:
            vm = self._vm(name)
            require(name, vm.state, "finalize-target")
            if success:
                paused = bool(vm.saved and vm.saved.get("paused"))
                vm.saved = None
                self._set(vm, S.PAUSED if paused else S.RUNNING, "finalize migration of")
                self._boot(vm, "migrated in")
            else:
                self._set(vm, S.STOPPED, "finalize migration of")
                del self._vms[name]
