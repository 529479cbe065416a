"""Snapshot and restore of the native VMM.

::

    save_machine(machine, path, memory="full"|"diff", base=None) -> SnapshotInfo
        the machine paused (Machine.pause(): vCPUs and device threads held); one file written
    load_snapshot(path, verify_memory=True) -> MachineSnapshot
        checked (magic, version, checksums, size limits); a diff brings its chain of bases
    Machine.from_snapshot(snap, stats, memory_backing="copy"|"private-mmap", overrides=None)
        a machine ready to run(); overrides (SnapshotOverrides) for a clone's disks, taps, vsock
    python -m vnix.vmm --restore PATH [--memory-backing copy|private-mmap] [--disk ...] [--net ...]
        the VMM process started from a snapshot

Modules: ``format`` (the file, drawn in its docstring), ``codec`` (state tree <-> JSON),
``state`` (the tree), ``dirty`` (pages changed since the last snapshot), ``save``, ``load``,
``restore``, ``harness`` (a VMM process for tests that snapshots itself on a signal).

Error tree::

    SnapshotError            (VmmError, UsageError: exit status 2)
     └── SnapshotMismatch    the snapshot does not fit its restore (overrides, a diff's base)
"""
from __future__ import annotations

from vnix.vmm.snapshot.errors import SnapshotError, SnapshotMismatch
from vnix.vmm.snapshot.load import MachineSnapshot, load_snapshot
from vnix.vmm.snapshot.restore import SnapshotOverrides
from vnix.vmm.snapshot.save import SnapshotInfo, save_machine

__all__ = ["MachineSnapshot", "SnapshotError", "SnapshotInfo", "SnapshotMismatch", "SnapshotOverrides",
           "load_snapshot", "save_machine"]
