"""One virtio-blk request (virtio 1.2, 5.2.6 "Device Operation")::

    struct virtio_blk_req {
        le32 type; le32 reserved; le64 sector;   device-readable header (16 bytes)
        u8 data[];                               readable (OUT, DISCARD, WRITE_ZEROES) or
                                                 writable (IN, GET_ID)
        u8 status;                               the last device-writable byte
    };

Sectors are 512 bytes whatever blk_size says (5.2.6: "sector ... in 512-byte units").
Every length is checked against the chain and every sector range against the disk: a request
that does not fit fails with VIRTIO_BLK_S_IOERR, never reaching the image.
"""
from __future__ import annotations

import struct

from vnix.vmm.devices.virtio.chain import gather, total, views
from vnix.vmm.devices.virtio.queue import DescriptorChain, Descriptor
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import Record

SECTOR = 512
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20  # VIRTIO_BLK_ID_BYTES
HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")  # struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags
WRITE_ZEROES_F_UNMAP = 1


class Request(Record):
    __slots__ = ("type", "sector", "readable", "readable_skip", "data_out", "data_in_len", "status_addr")

    def __init__(self, type: int, sector: int, readable: list[Descriptor], readable_skip: int,  # noqa: A002
                 data_out: list[Descriptor], data_in_len: int, status_addr: int) -> None:
        self.type, self.sector = type, sector
        self.readable = readable  # data the device reads, after the header
        self.readable_skip = readable_skip  # header bytes to skip in ``readable``
        self.data_out = data_out  # the writable descriptors (data then status)
        self.data_in_len = data_in_len  # writable bytes before the status byte
        self.status_addr = status_addr


def parse(mem: GuestMemory, chain: DescriptorChain) -> Request | None:
    """The request in ``chain``, or None if it has no header or no status byte (it cannot even
    be failed properly: the caller returns it with length 0)."""
    readable, writable = chain.readable, chain.writable
    if total(readable) < HEADER.size or total(writable) < 1:
        return None
    type_, _reserved, sector = HEADER.unpack(gather(mem, readable, 0, HEADER.size))
    last = writable[-1]
    while last.length == 0:  # zero-length trailing descriptors: find the real last byte
        writable = writable[:-1]
        if not writable:
            return None
        last = writable[-1]
    status_addr = last.addr + last.length - 1
    return Request(type_, sector, readable, HEADER.size, writable, total(writable) - 1, status_addr)


def data_in_views(mem: GuestMemory, req: Request) -> list[memoryview]:
    return views(mem, req.data_out, 0, req.data_in_len)


def data_out_views(mem: GuestMemory, req: Request) -> list[memoryview]:
    return views(mem, req.readable, req.readable_skip)


def data_out_len(req: Request) -> int:
    return total(req.readable) - req.readable_skip


def segments(mem: GuestMemory, req: Request, limit: int) -> list[tuple[int, int, int]] | None:
    """DISCARD / WRITE_ZEROES segments (sector, count, flags); None if malformed or too many."""
    n = data_out_len(req)
    if n == 0 or n % SEGMENT.size or n // SEGMENT.size > limit:
        return None
    raw = gather(mem, req.readable, req.readable_skip)
    return [SEGMENT.unpack_from(raw, i) for i in range(0, n, SEGMENT.size)]
