"""virtio-vsock state for snapshots: the CID and the socket path. Streams are not kept (their host
sockets cannot be saved); the restored device tells the guest with a transport reset event."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VsockState:
    cid: int
    uds: str
