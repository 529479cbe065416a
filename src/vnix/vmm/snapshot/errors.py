"""The snapshot package's errors (kept apart so every module of the package can raise them).

Error tree::

    SnapshotError            (a VmmError and a UsageError: exit status 2)
     │   a snapshot cannot be read (corrupt, truncated, foreign, too large) or taken (the machine
     │   is not paused, no dirty tracking for a diff, the file cannot be written)
     └── SnapshotMismatch    the snapshot does not fit what restores it (overrides, a diff's base)
"""
from __future__ import annotations

from vnix.errors import UsageError
from vnix.vmm import VmmError


class SnapshotError(VmmError, UsageError):
    """A snapshot cannot be read or written; the message is one line."""

    exit_code = 2


class SnapshotMismatch(SnapshotError):
    """The snapshot and what it is restored with do not agree."""
