"""virtio-vsock packets (virtio 1.2, 5.10.6)::

    struct virtio_vsock_hdr {                                         44 bytes, little-endian
        le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port;
        le32 len;       payload bytes after the header
        le16 type;      1 STREAM (2 SEQPACKET needs a feature we do not offer)
        le16 op;        below
        le32 flags;     SHUTDOWN: 1 RCV, 2 SEND
        le32 buf_alloc; the sender's receive buffer for this connection
        le32 fwd_cnt;   bytes the sender has consumed from it
    };

Credit (5.10.6.3): a sender may have at most ``peer buf_alloc - (tx_cnt - peer fwd_cnt)`` bytes
outstanding; every header carries the sender's own ``buf_alloc`` and ``fwd_cnt``.
"""
from __future__ import annotations

import struct
from vnix.vmm.record import Record

HEADER = struct.Struct("<QQIIIHHIII")
HDR_SIZE = HEADER.size  # 44
HOST_CID = 2  # 5.10.4: the host's well-known CID
TYPE_STREAM = 1
OP_INVALID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(8)
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2
OP_NAMES = {OP_REQUEST: "REQUEST", OP_RESPONSE: "RESPONSE", OP_RST: "RST", OP_SHUTDOWN: "SHUTDOWN",
            OP_RW: "RW", OP_CREDIT_UPDATE: "CREDIT_UPDATE", OP_CREDIT_REQUEST: "CREDIT_REQUEST"}


class Packet(Record):
    __slots__ = ("src_cid", "dst_cid", "src_port", "dst_port", "op", "type", "flags", "buf_alloc", "fwd_cnt", "data")

    def __init__(self, src_cid: int, dst_cid: int, src_port: int, dst_port: int, op: int, type: int = TYPE_STREAM,  # noqa: A002
                 flags: int = 0, buf_alloc: int = 0, fwd_cnt: int = 0, data: bytes = b"") -> None:
        self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.op = src_cid, dst_cid, src_port, dst_port, op
        self.type, self.flags, self.buf_alloc, self.fwd_cnt, self.data = type, flags, buf_alloc, fwd_cnt, data

    def header(self) -> bytes:
        return HEADER.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, len(self.data),
                           self.type, self.op, self.flags, self.buf_alloc & 0xFFFFFFFF, self.fwd_cnt & 0xFFFFFFFF)

    @classmethod
    def parse(cls, raw: bytes) -> tuple[Packet, int]:
        """The header in the first 44 bytes of ``raw`` and its ``len`` field (not yet checked)."""
        src_cid, dst_cid, sp, dp, length, typ, op, flags, buf_alloc, fwd_cnt = HEADER.unpack_from(raw)
        return cls(src_cid, dst_cid, sp, dp, op, typ, flags, buf_alloc, fwd_cnt), length

    def __repr__(self) -> str:
        return (f"Packet({OP_NAMES.get(self.op, self.op)} {self.src_cid}:{self.src_port} -> "
                f"{self.dst_cid}:{self.dst_port}, {len(self.data)} bytes)")
