"""virtio-net state for snapshots. A frame read from the tap but not yet given to the guest
(no rx buffers) is kept; the tap itself is re-opened by name on restore."""
from __future__ import annotations

from vnix.vmm.record import Record


class NetState(Record):
    __slots__ = ("mac", "tap", "bridge", "pending_frame")

    def __init__(self, mac: str, tap: str, bridge: str | None, pending_frame: bytes | None = None) -> None:
        self.mac, self.tap, self.bridge, self.pending_frame = mac, tap, bridge, pending_frame
