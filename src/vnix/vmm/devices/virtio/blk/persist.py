"""virtio-blk state for snapshots. Requests complete before ``notify`` returns, so between two
notifications nothing is in flight; ``in_flight`` stays explicit for when that changes."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BlkState:
    path: str
    format: str
    readonly: bool
    serial: str
    in_flight: list[int] = field(default_factory=list)  # heads taken but not yet returned
