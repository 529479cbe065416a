"""virtio-vsock state for snapshots: the CID and the socket path. Streams are not kept (their host
sockets cannot be saved); the restored device tells the guest with a transport reset event."""
from __future__ import annotations

from vnix.vmm.record import Record


class VsockState(Record):
    __slots__ = ("cid", "uds")

    def __init__(self, cid: int, uds: str) -> None:
        self.cid, self.uds = cid, uds
