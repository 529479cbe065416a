"""virtio-balloon state for snapshots: the target, what the driver reported, the PFNs in the
balloon (their host pages stay discarded in a snapshot's memory file) and the held stats buffer."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BalloonState:
    target_pages: int = 0
    actual_pages: int = 0
    inflated: list[int] = field(default_factory=list)
    stats_head: int | None = None
    reported_bytes: int = 0
