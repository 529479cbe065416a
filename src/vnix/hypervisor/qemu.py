"""The QEMU driver: one detached ``qemu-system-x86_64`` (or ``-aarch64``) per VM, driven by QMP.

* Processes are started with ``-daemonize -pidfile``: QEMU forks, reports start-up errors to us
  through its exit status, and then belongs to nobody, so it survives the agent (and no zombie
  waits for a parent that is gone). Its files live in a :class:`~vnix.hypervisor.rundir.RunDir`.
* QMP on ``qmp.sock`` (one short connection per call, :mod:`vnix.hypervisor.qmp`); the serial
  port is a unix socket server ``serial.sock`` whose output QEMU also writes to ``console.log``
  (chardev ``logfile=``), so the console is recorded even while no agent runs; VNC on
  ``vnc.sock``.
* ``-no-shutdown``: a guest that powers off leaves QEMU alive in the ``shutdown`` run state, so
  the driver can tell a clean power-off (-> STOPPED) from a process that died (-> CRASHED).
* Accelerator: :func:`vnix.hypervisor.accel.choose_accel` (KVM when hardware-assisted, else
  TCG), or what the VM's ``DriverOptions.accel`` forces. The emulator follows the guest's
  architecture (``MachineConfig.arch``, :data:`~vnix.hypervisor.qemu_cmdline.TARGETS`): an
  aarch64 guest runs on ``qemu-system-aarch64 -machine virt`` under TCG.
* Suspend to disk and memory snapshots: QMP ``migrate`` to ``exec:cat > FILE`` with the VM
  paused, then quit; resume: a new QEMU with ``-incoming exec:cat FILE`` (QEMU 7.2 has no
  ``file:`` migration URI). Migration: ``-incoming tcp:HOST:PORT`` on the target, ``migrate``
  on the source (docs/devel/migration.rst).
"""
from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from vnix.hypervisor.accel import choose_accel
from vnix.hypervisor.errors import DriverUnavailable, Unsupported, VmProcessError
from vnix.hypervisor.process import ProcessHypervisor
from vnix.hypervisor.qemu_cmdline import qemu_argv, target
from vnix.hypervisor.qemu_info import collect_info
from vnix.hypervisor.qmp import QmpCommandError, qmp, qmp_batch
from vnix.hypervisor.rundir import Record, RunDir
from vnix.hypervisor.spec import MigrationStatus, MigrationTarget, VmInfo, VmSpec
from vnix.hypervisor.state import LIVE_STATES, VmState, require

S = VmState

# QMP query-status "status" -> our state (qapi/run-state.json RunState).
_RUNSTATE = {
    "running": S.RUNNING,
    "paused": S.PAUSED,
    "suspended": S.PAUSED,  # guest-initiated ACPI S3
    "prelaunch": S.PAUSED,
    "debug": S.PAUSED,
    "restore-vm": S.PAUSED,
    "save-vm": S.PAUSED,
    "finish-migrate": S.MIGRATING,
    "postmigrate": S.MIGRATING,
    "inmigrate": S.INCOMING,
    "shutdown": S.STOPPED,
    "internal-error": S.CRASHED,
    "io-error": S.CRASHED,
    "guest-panicked": S.CRASHED,
    "watchdog": S.CRASHED,
}


class QemuHypervisor(ProcessHypervisor):
    name = "qemu"
    snapshot_suffix = ".state"

    def __init__(self, run_dir: Path | str, *, binary: str | None = None,
                 migration_host: str = "127.0.0.1", start_timeout: float = 30.0) -> None:
        super().__init__(run_dir, start_timeout=start_timeout)
        self.binary = binary  # None: the emulator of each guest's architecture
        self.migration_host = migration_host

    # -- helpers --------------------------------------------------------------------------
    def _observe(self, rd: RunDir) -> Record:
        """The recorded state, corrected by what the process says (and persisted)."""
        rec = rd.load()
        if rec.state not in LIVE_STATES:
            return rec
        pid = rd.pid()
        if pid is None:
            rec.state = S.CRASHED
            rec.detail = "the QEMU process died"
            rd.save(rec)
            return rec
        try:
            status = qmp(str(rd.qmp), "query-status", timeout=5.0)["status"]
        except VmProcessError as exc:
            rec.detail = f"QEMU does not answer: {exc}"
            return rec
        seen = _RUNSTATE.get(status, rec.state)
        if seen == S.STOPPED:  # the guest powered off (-no-shutdown kept QEMU alive)
            self._end_process(rd)
            rec.state, rec.detail = S.STOPPED, "the guest powered off"
            rd.save(rec)
        elif seen == S.CRASHED:
            rec.state, rec.detail = S.CRASHED, f"QEMU run state {status}"
            rd.save(rec)
        elif rec.state == S.MIGRATING and seen in (S.RUNNING, S.PAUSED):
            pass  # still migrating from QEMU's point of view until finalize
        elif seen != rec.state and rec.state != S.MIGRATING:
            rec.state = seen
            rd.save(rec)
        return rec

    def _launch(self, rd: RunDir, spec: VmSpec, rec: Record, incoming: str | None) -> None:
        accel = choose_accel(spec.options.accel, spec.config.arch)
        tgt = target(spec.config.arch)
        binary = self.binary or tgt.binary
        for stale in (rd.qmp, rd.serial, rd.vnc, rd.pid_file):
            stale.unlink(missing_ok=True)
        log = str(rd.console_log).replace(",", ",,")
        extra = [
            "-name", f"{spec.name},process=vnix-{spec.name}",
            "-uuid", spec.uuid,
            "-chardev", f"socket,id=ser0,path={str(rd.serial).replace(',', ',,')},server=on,"
                        f"wait=off,logfile={log},logappend=on",
            "-no-shutdown",
            "-daemonize", "-pidfile", str(rd.pid_file),
        ]
        if incoming:
            extra += ["-incoming", incoming]
        extra += spec.options.extra_args
        argv = qemu_argv(
            spec.config, accel=accel, machine=spec.options.machine, serial="chardev:ser0",
            qmp_socket=str(rd.qmp), vnc=f"unix:{rd.vnc}" if spec.options.vnc else None,
            extra=extra, binary=binary,
        )
        (rd.path / "argv").write_text(shlex.join(argv) + "\n")
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=self.start_timeout, start_new_session=True)
        except FileNotFoundError:
            raise DriverUnavailable(f"{binary} is not installed (apt-get install "
                                    f"{tgt.package})") from None
        except subprocess.TimeoutExpired:
            rd.kill()
            raise VmProcessError(f"QEMU for {spec.name!r} did not start in "
                                 f"{self.start_timeout:g}s") from None
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise VmProcessError(f"QEMU for {spec.name!r} failed to start: {why}")
        rec.accel = accel
        rec.started = time.time()

    def _ask_to_quit(self, rd: RunDir) -> None:
        """QMP quit."""
        try:
            qmp(str(rd.qmp), "quit", timeout=3.0)
        except VmProcessError:
            pass

    def _command(self, rd: RunDir, action: str) -> None:
        qmp(str(rd.qmp), {"pause": "stop", "resume": "cont"}[action])

    def _wait_status(self, rd: RunDir, done: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = qmp(str(rd.qmp), "query-status")["status"]
            if status in done:
                return status
            time.sleep(0.1)
        raise VmProcessError(f"VM {rd.name!r} stayed {status!r} for {timeout:g}s")

    def _save_to(self, rd: RunDir, path: Path, timeout: float = 300.0) -> None:
        """Pause and stream the whole VM state into ``path`` (QMP migrate to exec:cat)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = "exec:cat > " + shlex.quote(str(path))
        qmp_batch(str(rd.qmp), [("stop", None), ("migrate", {"uri": uri})])
        deadline = time.monotonic() + timeout
        while True:
            st = qmp(str(rd.qmp), "query-migrate")
            if st.get("status") == "completed":
                return
            if st.get("status") in ("failed", "cancelled"):
                raise VmProcessError(f"saving VM {rd.name!r} failed: "
                                     f"{st.get('error-desc', st.get('status'))}")
            if time.monotonic() > deadline:
                qmp(str(rd.qmp), "migrate_cancel")
                raise VmProcessError(f"saving VM {rd.name!r} took over {timeout:g}s")
            time.sleep(0.1)

    def _save(self, rd: RunDir, path: Path, resume: bool) -> None:
        self._save_to(rd, path)
        if resume:
            qmp(str(rd.qmp), "cont")

    def _restore(self, rd: RunDir, rec: Record, path: Path) -> None:
        """A new QEMU that loads ``path`` and then runs."""
        self._launch(rd, rd.spec(), rec, "exec:cat " + shlex.quote(str(path)))
        self._wait_status(rd, {"paused", "running", "postmigrate"}, 300.0)
        qmp(str(rd.qmp), "cont")

    # -- definitions ----------------------------------------------------------------------
    def define(self, spec: VmSpec) -> None:
        with self._locked(spec.name, existing=False) as rd:
            rd.create(spec)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, name: str) -> None:
        with self._locked(name) as rd:
            spec, rec = rd.spec(), self._observe(rd)
            require(name, rec.state, "start")
            self._end_process(rd)  # a crashed QEMU may linger in internal-error
            self._launch(rd, spec, rec, None)
            self._set(rd, rec, S.RUNNING, "start")

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "stop")
            if rec.state == S.PAUSED:
                return False  # a paused guest cannot see the power button
            qmp(str(rd.qmp), "system_powerdown")
            try:
                self._wait_status(rd, {"shutdown"}, timeout)
            except VmProcessError:
                if rd.pid() is not None:
                    return False
            self._end_process(rd)
            self._set(rd, rec, S.STOPPED, "stop", "the guest powered off")
            return True

    def force_stop(self, name: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "force-stop")
            rd.kill()
            self._set(rd, rec, S.STOPPED, "force-stop", "forced off")

    def resume_from_disk(self, name: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "resume-from-disk")
            self._restore(rd, rec, rd.suspend_file)
            self._set(rd, rec, S.RUNNING, "resume-from-disk")
            rd.suspend_file.unlink(missing_ok=True)

    # -- information ----------------------------------------------------------------------
    def info(self, name: str) -> VmInfo:
        with self._locked(name) as rd:
            spec, rec = rd.spec(), self._observe(rd)
            return collect_info(self.name, rd, spec, rec)

    def vnc_address(self, name: str) -> str | None:
        rd = RunDir(self.root, name)
        spec = rd.spec()
        return f"unix:{rd.vnc}" if spec.options.vnc else None

    # -- memory and snapshots -------------------------------------------------------------
    def _balloon(self, rd: RunDir, spec: VmSpec, target_mib: int) -> None:
        qmp(str(rd.qmp), "balloon", {"value": target_mib * 1024 * 1024})

    def _check_snapshot(self, rd: RunDir) -> None:
        _snapshot_supported(rd.spec())

    # -- migration ------------------------------------------------------------------------
    def migrate_prepare_target(self, spec: VmSpec) -> MigrationTarget:
        with self._locked(spec.name, existing=False) as rd:
            if not rd.exists():
                rd.create(spec)
            rec = self._observe(rd)
            with socket.socket() as s:  # a free port; QEMU binds it a moment later
                s.bind((self.migration_host, 0))
                port = s.getsockname()[1]
            address = f"tcp:{self.migration_host}:{port}"
            self._launch(rd, rd.spec(), rec, address)
            self._set(rd, rec, S.INCOMING, "prepare a migration target for")
            return MigrationTarget(spec.name, address, self.name)

    def migrate_send(self, name: str, target: MigrationTarget) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "migrate")
            if target.driver != self.name:
                raise Unsupported(self.name, f"migrate to a {target.driver} target")
            qmp(str(rd.qmp), "migrate", {"uri": target.address})
            self._set(rd, rec, S.MIGRATING, "migrate")

    def migrate_status(self, name: str) -> MigrationStatus:
        with self._locked(name) as rd:
            rd.spec()
            st: dict[str, Any] = qmp(str(rd.qmp), "query-migrate")
            ram = st.get("ram", {})
            status = st.get("status", "none")
            if status not in ("none", "setup", "active", "completed", "failed", "cancelled"):
                status = "active"  # pre-switchover, device, cancelling, ...
            return MigrationStatus(status, int(ram.get("transferred", 0)),
                                   int(ram.get("remaining", 0)), int(ram.get("total", 0)),
                                   st.get("error-desc", ""))

    def migrate_finalize_source(self, name: str, success: bool) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "finalize-source")
            if success:
                self._end_process(rd)
                self._set(rd, rec, S.STOPPED, "finalize migration of", "migrated away")
                return
            try:
                qmp(str(rd.qmp), "migrate_cancel")
                if qmp(str(rd.qmp), "query-status")["status"] != "running":
                    qmp(str(rd.qmp), "cont")
            except QmpCommandError:
                pass
            self._set(rd, rec, S.RUNNING, "finalize migration of", "migration abandoned")

    def migrate_finalize_target(self, name: str, success: bool) -> None:
        with self._locked(name) as rd:
            rec = rd.load()
            require(name, rec.state, "finalize-target")
            if success:
                status = self._wait_status(rd, {"running", "paused", "postmigrate"}, 60.0)
                self._set(rd, rec, S.RUNNING if status == "running" else S.PAUSED,
                          "finalize migration of", "migrated in")
                return
            rd.kill()
            rd.remove()


def _snapshot_supported(spec: VmSpec) -> None:
    """Memory snapshots are exact only if no writable disk changes behind them."""
    writable = [d.path for d in spec.config.disks if not d.readonly]
    if writable:
        raise Unsupported("qemu", "snapshot a VM with writable disks",
                          f"{', '.join(writable)} would not be saved with the memory state")

