"""What drivers whose VMs are detached processes with a run directory share (``qemu``, ``native``).

Each VM is one process started detached, with its files in a
:class:`~vnix.hypervisor.rundir.RunDir`: the state record, the pid, the control socket, the
serial socket and the console log the process writes itself. :class:`ProcessHypervisor` holds
what does not depend on how the process is driven (a lock per VM, the console, the state
record, snapshot files); a driver adds its control channel (QMP, the native control API)
through a few hooks: :meth:`~ProcessHypervisor._observe`, :meth:`~ProcessHypervisor._ask_to_quit`,
:meth:`~ProcessHypervisor._command`, :meth:`~ProcessHypervisor._balloon`,
:meth:`~ProcessHypervisor._save` and :meth:`~ProcessHypervisor._restore`.
"""
from __future__ import annotations

import abc
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from vnix.hypervisor.base import Hypervisor
from vnix.hypervisor.errors import HypervisorError, VmProcessError
from vnix.hypervisor.rundir import Record, RunDir, list_vms, read_from, wait_gone
from vnix.hypervisor.spec import SnapshotInfo, VmSpec
from vnix.hypervisor.state import VmState, require, transition

S = VmState


class ProcessHypervisor(Hypervisor):
    """A driver whose VMs are detached processes, one run directory each, under ``root``."""

    snapshot_suffix: ClassVar[str] = ".state"  # the files in the run dir's snapshots/

    def __init__(self, run_dir: Path | str, *, start_timeout: float) -> None:
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # -- what a driver provides -----------------------------------------------------------
    @abc.abstractmethod
    def _observe(self, rd: RunDir) -> Record:
        """The recorded state, corrected by what the process says (and persisted)."""

    @abc.abstractmethod
    def _ask_to_quit(self, rd: RunDir) -> None:
        """Ask the live process to end at once (errors swallowed: it is killed if it lingers)."""

    @abc.abstractmethod
    def _command(self, rd: RunDir, action: str) -> None:
        """Carry out ``pause`` or ``resume`` on the live process."""

    @abc.abstractmethod
    def _balloon(self, rd: RunDir, spec: VmSpec, target_mib: int) -> None:
        """Leave the guest ``target_mib`` MiB (already checked against its memory size)."""

    @abc.abstractmethod
    def _save(self, rd: RunDir, path: Path, resume: bool) -> None:
        """Pause the VM and write its whole state into ``path``; run it on if ``resume``."""

    @abc.abstractmethod
    def _restore(self, rd: RunDir, rec: Record, path: Path) -> None:
        """Start a new process that loads the state saved in ``path`` and runs."""

    def _check_snapshot(self, rd: RunDir) -> None:
        """Raise if this VM's snapshots could not be exact."""

    # -- helpers --------------------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str, *, existing: bool = True) -> Iterator[RunDir]:
        """The VM's run dir, its lock held; NoSuchVm unless it exists (or not ``existing``)."""
        with self._locks_guard:
            lock = self._locks.setdefault(name, threading.RLock())
        with lock:
            rd = RunDir(self.root, name)
            if existing:
                rd.spec()  # NoSuchVm
            yield rd

    def _rundir(self, name: str) -> RunDir:
        """The run dir of an existing VM, unlocked (for reading its files)."""
        rd = RunDir(self.root, name)
        rd.spec()  # NoSuchVm
        return rd

    def _set(self, rd: RunDir, rec: Record, new: VmState, action: str, detail: str = "") -> None:
        rec.state = transition(rd.name, rec.state, new, action)
        rec.detail = detail
        rd.save(rec)

    def _end_process(self, rd: RunDir, timeout: float = 10.0) -> None:
        """End the process: ask it to quit, then SIGKILL if it lingers."""
        pid = rd.pid()
        if pid is None:
            return
        self._ask_to_quit(rd)
        if not wait_gone(pid, timeout):
            rd.kill()
        rd.pid_file.unlink(missing_ok=True)

    def _snapshot_path(self, rd: RunDir, tag: str) -> Path:
        return rd.snapshot_dir / f"{safe_tag(tag)}{self.snapshot_suffix}"

    # -- definitions ----------------------------------------------------------------------
    def spec(self, name: str) -> VmSpec:
        return RunDir(self.root, name).spec()

    def list(self) -> list[str]:
        return list_vms(self.root)

    def state(self, name: str) -> VmState:
        with self._locked(name) as rd:
            return self._observe(rd).state

    def destroy(self, name: str) -> None:
        with self._locked(name) as rd:
            self._end_process(rd, timeout=5.0)
            rd.kill()
            rd.remove()

    # -- lifecycle ------------------------------------------------------------------------
    def pause(self, name: str) -> None:
        self._change(name, "pause", S.PAUSED)

    def resume(self, name: str) -> None:
        self._change(name, "resume", S.RUNNING)

    def _change(self, name: str, action: str, new: VmState) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, action)
            self._command(rd, action)
            self._set(rd, rec, new, action)

    def suspend(self, name: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "suspend")
            self._save(rd, rd.suspend_file, resume=False)
            self._end_process(rd)
            self._set(rd, rec, S.SUSPENDED, "suspend", f"saved to {rd.suspend_file}")

    # -- the console ----------------------------------------------------------------------
    def console_read(self, name: str, offset: int = 0) -> tuple[bytes, int]:
        return read_from(self._rundir(name).console_log, offset)

    def console_lines(self, name: str, limit: int = 50) -> list[str]:
        rd = self._rundir(name)
        size = rd.console_log.stat().st_size if rd.console_log.exists() else 0
        data, _ = read_from(rd.console_log, max(0, size - 64 * 1024))
        text = data.decode("utf-8", "replace").replace("\r", "")
        return text.splitlines()[-limit:] if limit > 0 else []

    def console_write(self, name: str, data: bytes) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "pause")  # needs a running guest
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5.0)
                    s.connect(str(rd.serial))
                    s.sendall(data)
                    time.sleep(0.05)  # let the process read before the hang-up
            except OSError as exc:
                raise VmProcessError(f"cannot write to {name!r}'s serial port: {exc}") from None

    # -- memory and snapshots -------------------------------------------------------------
    def set_balloon(self, name: str, target_mib: int) -> None:
        with self._locked(name) as rd:
            spec, rec = rd.spec(), self._observe(rd)
            require(name, rec.state, "balloon")
            if not 1 <= target_mib <= spec.config.memory_mib:
                raise HypervisorError(
                    f"balloon target {target_mib} MiB is outside 1..{spec.config.memory_mib}")
            self._balloon(rd, spec, target_mib)

    def snapshot(self, name: str, tag: str) -> SnapshotInfo:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "snapshot")
            self._check_snapshot(rd)
            path = self._snapshot_path(rd, tag)
            self._save(rd, path, resume=rec.state == S.RUNNING)
            return SnapshotInfo(tag, str(path), path.stat().st_mtime, path.stat().st_size)

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        rd = self._rundir(name)
        if not rd.snapshot_dir.is_dir():
            return []
        return [SnapshotInfo(p.stem, str(p), p.stat().st_mtime, p.stat().st_size)
                for p in sorted(rd.snapshot_dir.glob(f"*{self.snapshot_suffix}"))]

    def revert(self, name: str, tag: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "revert")
            path = self._snapshot_path(rd, tag)
            if not path.is_file():
                raise HypervisorError(f"VM {name!r} has no snapshot {tag!r}")
            self._end_process(rd)
            self._restore(rd, rec, path)
            rec.state, rec.detail = S.RUNNING, f"reverted to {tag}"
            rd.save(rec)


def safe_tag(tag: str) -> str:
    if not tag or not all(c.isalnum() or c in "-_." for c in tag) or tag.startswith("."):
        raise HypervisorError(f"snapshot tag {tag!r} may only use letters, digits, - _ .")
    return tag
