"""virtio-rng state for snapshots: nothing is in flight between notifications."""
from __future__ import annotations

from vnix.vmm.record import Record


class RngState(Record):
    __slots__ = ("bytes_given",)

    def __init__(self, bytes_given: int = 0) -> None:
        self.bytes_given = bytes_given
