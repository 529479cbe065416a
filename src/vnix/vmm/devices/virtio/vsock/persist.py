"""virtio-vsock state for snapshots: the CID and the socket path (streams are not kept)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VsockState:
    cid: int
    uds: str
