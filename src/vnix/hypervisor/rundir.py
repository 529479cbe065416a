"""A VM's run directory: the driver's only memory, so that VMs outlive the agent.

Layout (``<run_root>/<name>/``)::

    spec.json       the VmSpec (written at define)
    state.json      the state the driver last set, the accelerator, why it crashed
    pid             the VM process's pid (QEMU writes it with -pidfile)
    qmp.sock        QMP (qemu) / control socket (native)
    serial.sock     the first serial port, a unix socket QEMU serves
    console.log     everything the guest printed on that port (QEMU's chardev logfile),
                    written by the VM process itself, so nothing is lost while no agent runs
    vnc.sock        VNC server (qemu)
    suspend.state   the saved VM after ``suspend``
    snapshots/      memory snapshots

A restarted agent rebuilds everything from these files: a pid that is alive and still the VM's
process (its command line names this directory) means the VM runs; a dead one, where the
recorded state says it should run, means it crashed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from vnix.hypervisor.errors import HypervisorError, NoSuchVm, VmExists
from vnix.hypervisor.spec import VmSpec
from vnix.hypervisor.state import VmState

# sockaddr_un.sun_path is 108 bytes including the NUL (unix(7)).
MAX_SOCKET_PATH = 107


@dataclass
class Record:
    state: VmState = VmState.DEFINED
    accel: str | None = None
    detail: str = ""
    started: float = 0.0  # epoch seconds of the last start


class RunDir:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.path = root / name
        for sock in ("qmp.sock", "serial.sock", "vnc.sock"):
            if len(str(self.path / sock)) > MAX_SOCKET_PATH:
                raise HypervisorError(
                    f"run directory {self.path} is too long for unix sockets "
                    f"(at most {MAX_SOCKET_PATH - 12} characters): use a shorter --data-dir"
                )

    # -- files ----------------------------------------------------------------------------
    @property
    def spec_file(self) -> Path:
        return self.path / "spec.json"

    @property
    def qmp(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def serial(self) -> Path:
        return self.path / "serial.sock"

    @property
    def vnc(self) -> Path:
        return self.path / "vnc.sock"

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.path / "pid"

    @property
    def suspend_file(self) -> Path:
        return self.path / "suspend.state"

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    def exists(self) -> bool:
        return self.spec_file.is_file()

    def create(self, spec: VmSpec) -> None:
        if self.exists():
            raise VmExists(self.name)
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.spec_file, spec.to_json())
        self.save(Record())

    def spec(self) -> VmSpec:
        if not self.exists():
            raise NoSuchVm(self.name)
        return VmSpec.from_json(self.spec_file.read_text())

    def load(self) -> Record:
        if not self.exists():
            raise NoSuchVm(self.name)
        try:
            raw = json.loads((self.path / "state.json").read_text())
            return Record(VmState(raw["state"]), raw.get("accel"), raw.get("detail", ""),
                          raw.get("started", 0.0))
        except (OSError, ValueError, KeyError):
            return Record()

    def save(self, record: Record) -> None:
        raw = asdict(record)
        raw["state"] = record.state.value
        _write_atomic(self.path / "state.json", json.dumps(raw))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- the process ----------------------------------------------------------------------
    def pid(self) -> int | None:
        """The VM process's pid if it is alive and really ours (not a reused pid)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if not any(str(self.path) in arg for arg in proc.cmdline()) and \
                    os.readlink(f"/proc/{pid}/fd/1") != str(self.console_log.resolve()):
                return None  # (a clone server's child names no run dir but writes its console.log)
            return pid
        except (OSError, ValueError, psutil.Error):
            return None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the process and wait until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_gone(pid, timeout)
        self.pid_file.unlink(missing_ok=True)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def list_vms(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "spec.json").is_file())


def read_from(path: Path, offset: int, limit: int = 1 << 20) -> tuple[bytes, int]:
    """Bytes of ``path`` from ``offset`` (at most ``limit``); (data, next offset)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
