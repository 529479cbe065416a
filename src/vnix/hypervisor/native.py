"""The native driver: one ``python -m vnix.vmm --config FILE`` process per VM.

What works now: define, start (detached: the process is orphaned on purpose so it outlives the
agent and never lingers as our zombie), forced stop, destroy, state and information from /proc,
and the console (the VMM's serial output goes to ``console.log``). Everything that needs the
VMM's control socket (graceful stop, pause/resume, suspend, balloon, snapshots, migration)
raises :class:`Unsupported` until that API lands (its own issue).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from vnix.hypervisor.base import Hypervisor
from vnix.hypervisor.errors import Unsupported, VmProcessError
from vnix.hypervisor.qemu_info import proc_cpu_rss
from vnix.hypervisor.rundir import RunDir, list_vms, read_from
from vnix.hypervisor.spec import DiskInfo, NicInfo, VmInfo, VmSpec
from vnix.hypervisor.state import LIVE_STATES, VmState, require, transition

S = VmState
_LATER = "the native VMM's control API is not there yet"


class NativeHypervisor(Hypervisor):
    name = "native"

    def __init__(self, run_dir: Path | str, *, python: str = sys.executable) -> None:
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.python = python

    def _rd(self, name: str) -> RunDir:
        rd = RunDir(self.root, name)
        rd.spec()  # NoSuchVm
        return rd

    def define(self, spec: VmSpec) -> None:
        if spec.config.arch != "x86_64":
            raise Unsupported(self.name, f"run an {spec.config.arch} guest",
                              "the native VMM runs x86_64 guests on KVM; use the qemu driver")
        rd = RunDir(self.root, spec.name)
        rd.create(spec)
        (rd.path / "config.json").write_text(spec.config.to_json())

    def spec(self, name: str) -> VmSpec:
        return self._rd(name).spec()

    def list(self) -> list[str]:
        return list_vms(self.root)

    def state(self, name: str) -> VmState:
        rd = self._rd(name)
        rec = rd.load()
        if rec.state in LIVE_STATES and rd.pid() is None:
            rec.state, rec.detail = S.CRASHED, "the VMM process ended"
            rd.save(rec)
        return rec.state

    def destroy(self, name: str) -> None:
        rd = self._rd(name)
        rd.kill()
        rd.remove()

    def start(self, name: str) -> None:
        rd = self._rd(name)
        rec = rd.load()
        rec.state = self.state(name)
        require(name, rec.state, "start")
        from vnix.vmm.launch import vmm_argv

        cmd = vmm_argv(["--config", str(rd.path / "config.json")], python=self.python)
        # sh starts the VMM in the background and exits at once: the VMM is re-parented to init.
        script = (f"cd {shlex.quote(str(rd.path))} && setsid {shlex.join(cmd)} "
                  f">>console.log 2>&1 </dev/null & echo $! > pid")
        proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        if proc.returncode != 0:
            raise VmProcessError(f"cannot start the VMM for {name!r}: {proc.stderr.strip()}")
        time.sleep(0.2)
        if rd.pid() is None:
            tail = self.console_lines(name, 1)
            raise VmProcessError(f"the VMM for {name!r} exited at once: "
                                 f"{tail[0] if tail else 'no output'}")
        rec.state = transition(name, rec.state, S.RUNNING, "start")
        rec.started = time.time()
        rd.save(rec)

    def force_stop(self, name: str) -> None:
        rd = self._rd(name)
        rec = rd.load()
        rec.state = self.state(name)
        require(name, rec.state, "force-stop")
        rd.kill()
        rec.state = transition(name, rec.state, S.STOPPED, "force-stop")
        rd.save(rec)

    def info(self, name: str) -> VmInfo:
        rd = self._rd(name)
        spec, state = rd.spec(), self.state(name)
        pid = rd.pid() if state in LIVE_STATES else None
        cpu, rss = proc_cpu_rss(pid)
        cfg = spec.config
        return VmInfo(
            name=name, uuid=spec.uuid, driver=self.name, state=state, pid=pid, cpus=cfg.cpus,
            cpu_time_s=cpu, memory_mib=cfg.memory_mib, rss_mib=rss,
            disks=[DiskInfo(f"vd{chr(97 + i)}", d.path, d.format, d.readonly)
                   for i, d in enumerate(cfg.disks)],
            nics=[NicInfo(n.network, n.mac, n.tap, n.ip) for n in spec.nics],
            accel="kvm", detail=rd.load().detail,
        )

    def console_read(self, name: str, offset: int = 0) -> tuple[bytes, int]:
        return read_from(self._rd(name).console_log, offset)

    # -- not yet: these need the VMM's control socket -------------------------------------
    def console_write(self, name: str, data: bytes) -> None:
        raise Unsupported(self.name, "type on the console", _LATER)

    def stop(self, name: str, timeout: float = 30.0) -> bool:
        raise Unsupported(self.name, "stop gracefully", _LATER + "; use force-stop")

    def pause(self, name: str) -> None:
        raise Unsupported(self.name, "pause", _LATER)

    def resume(self, name: str) -> None:
        raise Unsupported(self.name, "resume", _LATER)

    def suspend(self, name: str) -> None:
        raise Unsupported(self.name, "suspend", _LATER)

    def resume_from_disk(self, name: str) -> None:
        raise Unsupported(self.name, "resume from disk", _LATER)
