"""virtio-balloon state for snapshots: the target, what the driver reported, the PFNs in the
balloon (their host pages stay discarded in a snapshot's memory file) and the held stats buffer."""
from __future__ import annotations

from vnix.vmm.record import Record


class BalloonState(Record):
    __slots__ = ("target_pages", "actual_pages", "inflated", "stats_head", "reported_bytes")

    def __init__(self, target_pages: int = 0, actual_pages: int = 0, inflated: list[int] | None = None,
                 stats_head: int | None = None, reported_bytes: int = 0) -> None:
        self.target_pages, self.actual_pages = target_pages, actual_pages
        self.inflated = inflated if inflated is not None else []
        self.stats_head, self.reported_bytes = stats_head, reported_bytes
