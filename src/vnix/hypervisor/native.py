"""The native driver: one ``python -m vnix.vmm`` process per VM, driven through its control API.

* The process is started detached (``setsid`` from a shell that exits at once: re-parented to
  init, so it outlives the agent and never lingers as our zombie) with, in the VM's
  :class:`~vnix.hypervisor.rundir.RunDir`::

      --config config.json          the MachineConfig
      --api-sock qmp.sock           the control API (vnix.vmm.api; the run dir's control socket)
      --serial unix:serial.sock     COM1 served on a socket: what console_write types into
      --stats-json stats.json       written at exit: the exit status and its reason
      >> console.log 2>&1           everything the guest printed, written by the VMM itself

* The state is what the API says (``GET /vm``) while the process lives; once it has ended,
  ``stats.json`` says how: status 0 (the guest powered off, or a stop we asked for) is STOPPED,
  anything else CRASHED with the VMM's reason. A restarted agent needs nothing but these files.
* Graceful stop = the API's Ctrl-Alt-Del (no forced fallback inside the VMM: ``stop`` returns
  False after its timeout and the caller decides); forced stop = the API's forced stop, SIGKILL
  if the VMM does not end.
* Snapshots and suspend go through ``PUT /snapshot`` (vnix.vmm.snapshot); resuming starts a new
  VMM with ``--restore FILE``. Migration is not there yet (its own issue).
* Clones (:meth:`NativeHypervisor.clone`): a VM made from a golden snapshot by a warm clone
  server (:class:`vnix.vmm.clone.CloneServer`, a ``fork()`` per clone, RAM MAP_PRIVATE from the
  file). ``clone.json`` in its run dir names the snapshot, its own disks (qcow2 overlays over
  the snapshot's disk), nets and vsock CID. The server's child is given the same files as a
  VMM process (:class:`vnix.vmm.clone.CloneSpec`): it writes console.log, serves qmp.sock and
  serial.sock, and writes stats.json at exit, so a clone is observed, typed into and stopped
  like any native VM. Starting a stopped clone brings it back to the golden state: its
  overlays made afresh, then ``--restore SNAP --memory-backing private-mmap`` with its own
  devices.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vnix.hypervisor.errors import HypervisorError, Unsupported, VmProcessError
from vnix.hypervisor.process import ProcessHypervisor
from vnix.hypervisor.qemu_info import proc_cpu_rss
from vnix.hypervisor.rundir import Record, RunDir, wait_gone
from vnix.hypervisor.spec import DiskInfo, MigrationTarget, NicInfo, VmInfo, VmSpec
from vnix.hypervisor.state import LIVE_STATES, VmState, require
from vnix.vmm.api.client import ApiClientError, VmmApiError, VmmClient, VmmRequestError

S = VmState
# ("stopping": Ctrl-Alt-Del sent, the guest still runs: RUNNING until the process ends)
_API_STATES = {"running": S.RUNNING, "paused": S.PAUSED, "starting": S.RUNNING, "stopping": S.RUNNING}
_MIGRATION = "live migration of native VMs is not implemented yet (a later issue)"
CLONE_FILE = "clone.json"
FIRST_CID = 3  # vsock CIDs 0-2 are reserved (hypervisor, local, host)


class NativeHypervisor(ProcessHypervisor):
    name = "native"
    snapshot_suffix = ".snap"

    def __init__(self, run_dir: Path | str, *, python: str = sys.executable,
                 start_timeout: float = 15.0) -> None:
        super().__init__(run_dir, start_timeout=start_timeout)
        self.python = python
        self._cid_lock = threading.Lock()

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _api(rd: RunDir, timeout: float = 10.0) -> VmmClient:
        return VmmClient(str(rd.qmp), timeout)

    @staticmethod
    def _stats_file(rd: RunDir) -> Path:
        return rd.path / "stats.json"

    def _remove_stale(self, rd: RunDir) -> None:
        """What an earlier process of this VM left (before a new one is started)."""
        for stale in (rd.qmp, rd.serial, rd.pid_file, self._stats_file(rd)):
            stale.unlink(missing_ok=True)

    def _ended(self, rd: RunDir, rec: Record) -> Record:
        """The process is gone: its stats.json says how it ended."""
        status, reason = None, ""
        try:
            raw = json.loads(self._stats_file(rd).read_text())
            status, reason = raw.get("exit_status"), str(raw.get("exit_reason", ""))
        except (OSError, ValueError):
            pass
        if status == 0:
            rec.state, rec.detail = S.STOPPED, reason or "the VM stopped"
        else:
            tail = self.console_lines(rd.name, 1)
            why = (f"the VMM exited with status {status}: {reason}" if status is not None
                   else "the VMM process ended without a word")
            rec.state, rec.detail = S.CRASHED, why + (f" (last line: {tail[0]})" if tail else "")
        rd.pid_file.unlink(missing_ok=True)
        rd.save(rec)
        return rec

    def _observe(self, rd: RunDir) -> Record:
        """The recorded state, corrected by the process and its API (and persisted)."""
        rec = rd.load()
        if rec.state not in LIVE_STATES:
            return rec
        if rd.pid() is None:
            return self._ended(rd, rec)
        try:
            seen = _API_STATES.get(self._api(rd, 5.0).vm()["state"])
        except ApiClientError as exc:
            rec.detail = f"the VMM does not answer: {exc}"
            return rec
        if seen is not None and seen != rec.state:
            rec.state = seen
            rd.save(rec)
        return rec

    def _launch(self, rd: RunDir, rec: Record, restore: Path | None = None) -> None:
        from vnix.vmm.launch import vmm_argv

        extra: list[str] = []
        clone = self._clone_record(rd)
        if restore is None and clone is not None:  # a clone (re)starts from its golden snapshot
            restore, extra = Path(clone["snapshot"]), self._clone_flags(rd, clone)
            _fresh_overlays(clone)

        self._remove_stale(rd)
        # From a snapshot the machine (memory, vCPUs, kernel, devices and their disks) is the
        # snapshot's own, so the VMM refuses --config beside --restore.
        machine = (["--restore", str(restore)] if restore is not None
                   else ["--config", str(rd.path / "config.json")])
        args = [*machine, *extra, "--api-sock", str(rd.qmp),
                "--serial", f"unix:{rd.serial}", "--stats-json", str(self._stats_file(rd))]
        cmd = vmm_argv(args, python=self.python)
        (rd.path / "argv").write_text(shlex.join(cmd) + "\n")
        # sh starts the VMM in the background and exits at once: the VMM is re-parented to init.
        # (``cd D && cmd &`` would background the whole list and write the pid elsewhere.)
        script = (f"cd {shlex.quote(str(rd.path))} || exit 1; setsid {shlex.join(cmd)} "
                  f">>console.log 2>&1 </dev/null & echo $! > pid")
        proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        if proc.returncode != 0:
            raise VmProcessError(f"cannot start the VMM for {rd.name!r}: {proc.stderr.strip()}")
        deadline = time.monotonic() + self.start_timeout
        while True:
            if rd.pid() is None:
                time.sleep(0.05)  # the pid file may lag the process by a moment
                if rd.pid() is None:
                    tail = self.console_lines(rd.name, 1)
                    raise VmProcessError(f"the VMM for {rd.name!r} exited at once: "
                                         f"{tail[0] if tail else 'no output'}")
            try:
                self._api(rd, 2.0).vm()
                break
            except ApiClientError:
                if time.monotonic() > deadline:
                    rd.kill()
                    raise VmProcessError(f"the VMM for {rd.name!r} did not answer on {rd.qmp} "
                                         f"within {self.start_timeout:g} s") from None
                time.sleep(0.02)
        rec.accel, rec.started = "kvm", time.time()

    def _ask_to_quit(self, rd: RunDir) -> None:
        """The API's forced stop."""
        try:
            self._api(rd, 3.0).stop(graceful=False)
        except ApiClientError:
            pass

    # -- definitions ----------------------------------------------------------------------
    def define(self, spec: VmSpec) -> None:
        if spec.config.arch != "x86_64":
            raise Unsupported(self.name, f"run an {spec.config.arch} guest",
                              "the native VMM runs x86_64 guests on KVM; use the qemu driver")
        rd = RunDir(self.root, spec.name)
        rd.create(spec)
        (rd.path / "config.json").write_text(spec.config.to_json())

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, name: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "start")
            self._launch(rd, rec)
            self._set(rd, rec, S.RUNNING, "start")

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "stop")
            if rec.state == S.PAUSED:
                return False  # a paused guest cannot see Ctrl-Alt-Del
            pid = rd.pid()
            try:
                self._api(rd).stop(graceful=True, timeout=None)
            except VmmRequestError as exc:
                raise HypervisorError(f"cannot stop {name!r}: {exc}") from None
            except ApiClientError as exc:
                raise VmProcessError(f"cannot stop {name!r}: {exc}") from None
            if pid is not None and not wait_gone(pid, timeout):
                return False
            self._ended(rd, rec)
            return rec.state == S.STOPPED

    def force_stop(self, name: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "force-stop")
            self._end_process(rd)
            self._set(rd, rec, S.STOPPED, "force-stop", "forced off")

    def _command(self, rd: RunDir, action: str) -> None:
        try:
            getattr(self._api(rd), action)()
        except ApiClientError as exc:
            raise VmProcessError(f"cannot {action} {rd.name!r}: {exc}") from None

    def resume_from_disk(self, name: str) -> None:
        with self._locked(name) as rd:
            rec = self._observe(rd)
            require(name, rec.state, "resume-from-disk")
            if not rd.suspend_file.is_file():
                raise HypervisorError(f"VM {name!r} has no saved state ({rd.suspend_file} is missing)")
            self._restore(rd, rec, rd.suspend_file)
            self._set(rd, rec, S.RUNNING, "resume-from-disk")
            rd.suspend_file.unlink(missing_ok=True)

    # -- information ----------------------------------------------------------------------
    def info(self, name: str) -> VmInfo:
        with self._locked(name) as rd:
            spec, rec = rd.spec(), self._observe(rd)
            pid = rd.pid() if rec.state in LIVE_STATES else None
            cpu, rss = proc_cpu_rss(pid)
            cfg = spec.config
            counters: dict[str, int] | None = None
            balloon: int | None = None
            if pid is not None:
                try:
                    st = self._api(rd, 5.0).stats()
                    counters = {str(k): int(v) for k, v in st.get("exits", {}).items()}
                    b = st.get("memory", {}).get("balloon")
                    if b and b.get("driver_active"):
                        balloon = cfg.memory_mib - int(b.get("actual_mib", 0))
                except ApiClientError as exc:
                    rec.detail = f"no statistics: {exc}"
            return VmInfo(
                name=name, uuid=spec.uuid, driver=self.name, state=rec.state, pid=pid, cpus=cfg.cpus,
                cpu_time_s=cpu, memory_mib=cfg.memory_mib, balloon_mib=balloon, rss_mib=rss,
                disks=[DiskInfo(f"vd{chr(97 + i)}", d.path, d.format, d.readonly)
                       for i, d in enumerate(cfg.disks)],
                nics=[NicInfo(n.network, n.mac, n.tap, n.ip) for n in spec.nics],
                exit_counters=counters, accel="kvm", detail=rec.detail,
            )

    # -- memory and snapshots -------------------------------------------------------------
    def _balloon(self, rd: RunDir, spec: VmSpec, target_mib: int) -> None:
        """The balloon holds the rest (the API takes the balloon's size, Firecracker's
        ``amount_mib``)."""
        try:
            self._api(rd).set_balloon(spec.config.memory_mib - target_mib)
        except ApiClientError as exc:
            raise VmProcessError(f"cannot set {rd.name!r}'s balloon: {exc}") from None

    def _save(self, rd: RunDir, path: Path, resume: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._api(rd).snapshot(str(path), resume=resume)
        except VmmRequestError as exc:
            raise HypervisorError(f"cannot save {rd.name!r}: {exc}") from None
        except VmmApiError as exc:
            if exc.status == 501:  # the VMM was built without vnix.vmm.snapshot
                raise Unsupported(self.name, "save a VM's state", str(exc)) from None
            raise VmProcessError(f"cannot save {rd.name!r}: {exc}") from None
        except ApiClientError as exc:
            raise VmProcessError(f"cannot save {rd.name!r}: {exc}") from None

    def _restore(self, rd: RunDir, rec: Record, path: Path) -> None:
        self._launch(rd, rec, restore=path)

    # -- clones ---------------------------------------------------------------------------
    @staticmethod
    def _clone_record(rd: RunDir) -> dict[str, Any] | None:
        try:
            raw: dict[str, Any] = json.loads((rd.path / CLONE_FILE).read_text())
            return raw
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HypervisorError(f"unreadable {rd.path / CLONE_FILE}: {exc}") from None

    @staticmethod
    def _clone_flags(rd: RunDir, clone: dict[str, Any]) -> list[str]:
        flags = ["--memory-backing", "private-mmap"]
        for d in clone["disks"]:
            flags += ["--disk", d]
        for n in clone["nets"]:
            flags += ["--net", n]
        if clone.get("cid"):
            flags += ["--vsock", f"cid={clone['cid']},uds={clone['vsock_uds']}"]
        return flags

    def _next_cid(self) -> int:
        used = set()
        for name in self.list():
            try:
                clone = json.loads((self.root / name / CLONE_FILE).read_text())
            except (OSError, ValueError):
                continue
            if clone.get("cid"):
                used.add(int(clone["cid"]))
        cid = FIRST_CID
        while cid in used:
            cid += 1
        return cid

    def clone(self, spec: VmSpec, snapshot: Path, server: Any, *, vsock: bool,
              overlays: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        """Define ``spec`` as a clone of ``snapshot`` and have ``server`` (a
        :class:`vnix.vmm.clone.CloneServer` of that snapshot) make it: it runs on return.
        ``spec.config.disks`` are the clone's own disks (``overlays``: (overlay, backing) pairs
        to make afresh on a restart), its nets its own taps and MACs; with ``vsock`` it gets a
        CID of its own and ``vsock.sock`` in its run dir. Returns the server's answer
        (``pid``, ``restore_ms``) with ``cid`` and ``vsock_uds``."""
        from vnix.vmm.clone import CloneError, CloneSpec

        rd = RunDir(self.root, spec.name)
        disks = [f"{d.path},format={d.format}" + (",readonly=on" if d.readonly else "")
                 for d in spec.config.disks]
        nets = [",".join(["tap", *(f"{k}={v}" for k, v in (("name", n.name), ("bridge", n.bridge),
                                                            ("mac", n.mac)) if v)])
                for n in spec.config.nets]
        with self._cid_lock:  # one CID per clone on this host
            cid = self._next_cid() if vsock else None
            self.define(spec)
            clone = {"snapshot": str(snapshot), "disks": disks, "nets": nets, "cid": cid,
                     "vsock_uds": str(rd.path.resolve() / "vsock.sock") if vsock else None,
                     "overlays": [list(o) for o in overlays or []]}
            (rd.path / CLONE_FILE).write_text(json.dumps(clone, indent=2))
        with self._locked(spec.name) as rd:
            rec = rd.load()
            self._remove_stale(rd)
            try:
                answer = server.clone(CloneSpec(
                    name=spec.name, serial_log=str(rd.console_log.resolve()),
                    vsock_uds=clone["vsock_uds"], cid=cid, disks=disks, nets=nets,
                    api_sock=str(rd.qmp.resolve()), serial_sock=str(rd.serial.resolve()),
                    stats_json=str(self._stats_file(rd).resolve())))
            except (CloneError, OSError) as exc:
                raise VmProcessError(f"cannot clone {spec.name!r} from {snapshot}: {exc}") from None
            rd.pid_file.write_text(f"{answer['pid']}\n")
            rec.accel, rec.started = "kvm", time.time()
            self._set(rd, rec, S.RUNNING, "start",
                      f"cloned from {snapshot.name} in {answer.get('restore_ms')} ms")
        return {**answer, "cid": cid, "vsock_uds": clone["vsock_uds"]}

    # -- migration: not yet ---------------------------------------------------------------
    def migrate_prepare_target(self, spec: VmSpec) -> MigrationTarget:
        raise Unsupported(self.name, "migrate", _MIGRATION)

    def migrate_send(self, name: str, target: MigrationTarget) -> None:
        raise Unsupported(self.name, "migrate", _MIGRATION)



def _fresh_overlays(clone: dict[str, Any]) -> None:
    """A clone's disks back to the golden state: each overlay made again over its backing."""
    for overlay, backing in clone.get("overlays", []):
        Path(overlay).unlink(missing_ok=True)
        out = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing,
                              "-F", "qcow2", overlay], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise VmProcessError(f"cannot remake overlay {overlay}: {out.stderr.strip()}")
