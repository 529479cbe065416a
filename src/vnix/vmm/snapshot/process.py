"""The VMM process started from a snapshot: ``python -m vnix.vmm --restore PATH
[--memory-backing copy|private-mmap] [--disk ...]... [--net ...]... [--vsock cid=N,uds=PATH]``.

Flags that describe devices replace the saved ones (a clone's own overlay disk, tap and MAC,
vsock socket); the rest of the machine (memory, vCPUs, kernel) is the snapshot's, so
``--kernel``, ``--memory`` and their like are refused next to ``--restore``. Stats marks:
``snapshot_loaded`` (file checked), ``vm_restored``, ``first_kvm_run``.
"""
from __future__ import annotations

from vnix.vmm import ConfigError

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from vnix.vmm.machine import Machine
    from vnix.vmm.stats import Stats

BACKINGS = ("copy", "private-mmap")
_NOT_WITH_RESTORE = ("config", "kernel", "initrd", "cmdline", "memory", "cpus", "balloon")


def restore_from_args(args: Any, stats: Stats) -> Machine:
    from vnix.vmm.config import parse_disk, parse_net, parse_vsock
    from vnix.vmm.machine import Machine
    from vnix.vmm.snapshot.load import load_snapshot
    from vnix.vmm.snapshot.restore import SnapshotOverrides

    for name in _NOT_WITH_RESTORE:
        if getattr(args, name, None) is not None:
            raise ConfigError(f"--{name} cannot be given with --restore (the snapshot has the machine)")
    if args.flat:
        raise ConfigError("--flat cannot be given with --restore")
    backing = args.memory_backing or "copy"
    if backing not in BACKINGS:
        raise ConfigError(f"--memory-backing must be copy or private-mmap, not {backing!r}")
    overrides = SnapshotOverrides(
        disks=[parse_disk(d) for d in args.disk] or None,
        nets=[parse_net(n) for n in args.net] or None,
        vsock=parse_vsock(args.vsock) if args.vsock else None,
    )
    # copy: every stored page is read and its crc32 checked on the way; private-mmap: pages come
    # in on demand, so only the header, state and extents are checked up front
    snap = load_snapshot(args.restore, verify_memory=False)
    stats.mark("snapshot_loaded")
    try:
        machine = Machine.from_snapshot(snap, stats, memory_backing=backing, overrides=overrides)
        if args.debug_exit and not machine.config.debug_exit:
            raise ConfigError("--debug-exit must be given when the snapshot is taken, not at restore")
    finally:
        snap.close()  # a MAP_PRIVATE mapping stays valid without its fd
    return machine
