"""virtio-blk state for snapshots. Requests complete before ``notify`` returns, so between two
notifications nothing is in flight; ``in_flight`` stays explicit for when that changes."""
from __future__ import annotations

from vnix.vmm.record import Record


class BlkState(Record):
    __slots__ = ("path", "format", "readonly", "serial", "in_flight")

    def __init__(self, path: str, format: str, readonly: bool, serial: str,  # noqa: A002
                 in_flight: list[int] | None = None) -> None:
        self.path, self.format, self.readonly, self.serial = path, format, readonly, serial
        self.in_flight = in_flight if in_flight is not None else []  # heads taken but not yet returned
