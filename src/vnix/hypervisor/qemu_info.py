"""What the QEMU driver reports about a VM: QMP queries plus /proc (and KVM's debugfs).

* ``query-balloon``: the RAM the guest has now (``actual``, bytes);
* ``query-block``: the disks QEMU has open, their files and formats;
* /proc through psutil: the process's CPU time (user + system) and resident memory;
* with KVM, ``/sys/kernel/debug/kvm/<pid>-<fd>/*exits``: the VM's exit counters
  (Documentation/virt/kvm/api.rst, "binary statistics" / debugfs); TCG has no VM exits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from vnix.hypervisor.errors import VmProcessError
from vnix.hypervisor.qmp import qmp_batch
from vnix.hypervisor.rundir import Record, RunDir
from vnix.hypervisor.spec import DiskInfo, NicInfo, VmInfo, VmSpec
from vnix.hypervisor.state import VmState

KVM_DEBUGFS = Path("/sys/kernel/debug/kvm")


def proc_cpu_rss(pid: int | None) -> tuple[float, float | None]:
    """(CPU seconds, RSS MiB) of a process, (0, None) if it is gone."""
    if pid is None:
        return 0.0, None
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        return t.user + t.system, p.memory_info().rss / (1024 * 1024)
    except psutil.Error:
        return 0.0, None


def kvm_exit_counters(pid: int) -> dict[str, int] | None:
    """Exit counters KVM keeps for the VMs of process ``pid``, if debugfs shows them."""
    try:
        dirs = list(KVM_DEBUGFS.glob(f"{pid}-*"))
    except OSError:
        return None
    counters: dict[str, int] = {}
    for d in dirs:
        for f in d.glob("*exits"):
            try:
                counters[f.name] = counters.get(f.name, 0) + int(f.read_text().strip())
            except (OSError, ValueError):
                continue
    return counters or None


def collect_info(driver: str, rd: RunDir, spec: VmSpec, rec: Record) -> VmInfo:
    cfg = spec.config
    pid = rd.pid() if rec.state in (VmState.RUNNING, VmState.PAUSED, VmState.MIGRATING,
                                    VmState.INCOMING) else None
    cpu, rss = proc_cpu_rss(pid)
    disks = [DiskInfo(f"vd{chr(97 + i)}", d.path, d.format, d.readonly)
             for i, d in enumerate(cfg.disks)]
    balloon: int | None = None
    detail = rec.detail
    if pid is not None and rec.state != VmState.INCOMING:
        try:
            bal, blocks = qmp_batch(str(rd.qmp), [("query-balloon", None),
                                                   ("query-block", None)], timeout=5.0)
            balloon = int(bal["actual"]) // (1024 * 1024)
            disks = _disks_from_qmp(blocks) or disks
        except VmProcessError as exc:
            detail = detail or str(exc)
    return VmInfo(
        name=spec.name, uuid=spec.uuid, driver=driver, state=rec.state, pid=pid,
        cpus=cfg.cpus, cpu_time_s=cpu, memory_mib=cfg.memory_mib, balloon_mib=balloon,
        rss_mib=rss, disks=disks,
        nics=[NicInfo(n.network, n.mac, n.tap, n.ip) for n in spec.nics],
        exit_counters=kvm_exit_counters(pid) if pid and rec.accel == "kvm" else None,
        vnc=f"unix:{rd.vnc}" if spec.options.vnc and pid else None,
        accel=rec.accel, detail=detail,
    )


def _disks_from_qmp(blocks: list[dict[str, Any]]) -> list[DiskInfo]:
    out = []
    for i, b in enumerate(b for b in blocks if b.get("inserted")):
        ins = b["inserted"]
        img = ins.get("image", {})
        out.append(DiskInfo(f"vd{chr(97 + i)}", ins.get("file", ""), ins.get("drv", ""),
                            bool(ins.get("ro")), img.get("virtual-size")))
    return out
