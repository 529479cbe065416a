"""virtio-net state for snapshots. A frame read from the tap but not yet given to the guest
(no rx buffers) is kept; the tap itself is re-opened by name on restore."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NetState:
    mac: str
    tap: str
    bridge: str | None
    pending_frame: bytes | None = None
