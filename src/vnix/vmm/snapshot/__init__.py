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

# The rest is imported when first used (PEP 562): a VMM restoring a snapshot does not import
# the saving side, and a VMM that never snapshots imports none of it.
_LAZY = {"MachineSnapshot": "load", "load_snapshot": "load", "SnapshotOverrides": "restore",
         "SnapshotInfo": "save", "save_machine": "save"}
TYPE_CHECKING = False
if TYPE_CHECKING:
    from vnix.vmm.snapshot.load import MachineSnapshot, load_snapshot
    from vnix.vmm.snapshot.restore import SnapshotOverrides
    from vnix.vmm.snapshot.save import SnapshotInfo, save_machine


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = ["MachineSnapshot", "SnapshotError", "SnapshotInfo", "SnapshotMismatch", "SnapshotOverrides",
           "load_snapshot", "save_machine"]
