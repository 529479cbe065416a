"""virtio-blk (virtio 1.2, 5.2) on a :class:`~vnix.vmm.block.image.BlockImage`.

Offered features (5.2.3): SEG_MAX, BLK_SIZE, FLUSH, DISCARD, WRITE_ZEROES, RO for read-only
disks, plus VERSION_1 and INDIRECT_DESC. One request queue.
"""
from __future__ import annotations

import logging
import struct

from vnix.vmm import VmmError
from vnix.vmm.block import BlockError
from vnix.vmm.block.image import BlockImage
from vnix.vmm.devices.virtio.blk import request as r
from vnix.vmm.devices.virtio.blk.persist import BlkState
from vnix.vmm.devices.virtio.constants import F_INDIRECT_DESC, F_VERSION_1, ID_BLOCK, bit
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.queue import DescriptorChain, Queue

log = logging.getLogger(__name__)

# 5.2.3 Feature bits
F_SIZE_MAX, F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH, F_DISCARD, F_WRITE_ZEROES = 1, 2, 5, 6, 9, 13, 14
QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2  # data segments a request may carry (header and status take two)
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB a segment
MAX_DISCARD_SEG = 32


class VirtioBlk(VirtioDevice):
    device_id = ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, image: BlockImage, *, serial: str = "", path: str = "", fmt: str = "raw") -> None:
        super().__init__()
        self.image = image
        self.serial = serial
        self.path, self.format = path, fmt
        self.capacity = image.size // r.SECTOR

    def device_features(self) -> int:
        f = bit(F_VERSION_1) | bit(F_INDIRECT_DESC) | bit(F_SEG_MAX) | bit(F_BLK_SIZE) | bit(F_FLUSH)
        if self.image.readonly:
            f |= bit(F_RO)
        else:
            f |= bit(F_DISCARD) | bit(F_WRITE_ZEROES)
        return f

    def config_bytes(self) -> bytes:
        """struct virtio_blk_config (5.2.4), up to write_zeroes_may_unmap."""
        return struct.pack(
            "<QIIHBBIBBHIBBHIIIIIB3x",
            self.capacity, 0, SEG_MAX,  # capacity, size_max, seg_max
            0, 0, 0,  # geometry
            r.SECTOR,  # blk_size
            0, 0, 0, 0,  # topology
            0, 0, 1,  # writeback, unused0, num_queues
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # discard
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # write zeroes (+ may_unmap)
        )

    # -- requests ---------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        self.drain(index, self._request)

    def _request(self, q: Queue, chain: DescriptorChain) -> None:
        mem = self.mem
        assert mem is not None
        req = r.parse(mem, chain)
        if req is None:
            self.metrics.bad_chains += 1
            self.complete(q, chain.head, 0)
            return
        status, written = self._execute(req)
        mem.write_u8(req.status_addr, status)
        self.metrics.ok += status == r.S_OK
        self.complete(q, chain.head, written + 1)

    def _execute(self, req: r.Request) -> tuple[int, int]:
        """(status, bytes written into the data part)."""
        mem = self.mem
        assert mem is not None
        try:
            if req.type == r.T_IN:
                n = req.data_in_len
                if not self._in_range(req.sector, n):
                    return r.S_IOERR, 0
                self.image.readv(req.sector * r.SECTOR, r.data_in_views(mem, req))
                return r.S_OK, n
            if req.type == r.T_OUT:
                n = r.data_out_len(req)
                if self.image.readonly or not self._in_range(req.sector, n):
                    return r.S_IOERR, 0
                self.image.writev(req.sector * r.SECTOR, r.data_out_views(mem, req))
                return r.S_OK, 0
            if req.type == r.T_FLUSH:
                self.image.flush()
                return r.S_OK, 0
            if req.type == r.T_GET_ID:
                ident = self.serial.encode()[: r.ID_BYTES].ljust(r.ID_BYTES, b"\0")
                n = min(req.data_in_len, r.ID_BYTES)
                if n:
                    from vnix.vmm.devices.virtio.chain import scatter

                    scatter(mem, req.data_out, ident[:n])
                return r.S_OK, n
            if req.type in (r.T_DISCARD, r.T_WRITE_ZEROES) and not self.image.readonly:
                return self._discard(req), 0
            return r.S_UNSUPP, 0
        except BlockError as exc:
            self.metrics.io_errors += 1
            log.info("virtio-blk: %s", exc)
            return r.S_IOERR, 0
        except OSError as exc:
            self.metrics.io_errors += 1
            log.warning("virtio-blk: host I/O error: %s", exc)
            return r.S_IOERR, 0

    def _in_range(self, sector: int, length: int) -> bool:
        """5.2.6.1: data length a multiple of 512, inside the disk."""
        return length % r.SECTOR == 0 and sector + length // r.SECTOR <= self.capacity

    def _discard(self, req: r.Request) -> int:
        segs = r.segments(self.mem, req, MAX_DISCARD_SEG)  # type: ignore[arg-type]
        if segs is None:
            return r.S_IOERR
        for sector, count, flags in segs:
            if count > MAX_DISCARD_SECTORS or not self._in_range(sector, count * r.SECTOR):
                return r.S_IOERR
            # 5.2.6.2: a discard has no flags; write-zeroes may only carry UNMAP
            if flags & ~(r.WRITE_ZEROES_F_UNMAP if req.type == r.T_WRITE_ZEROES else 0):
                return r.S_UNSUPP
        for sector, count, _ in segs:
            if req.type == r.T_DISCARD:
                self.image.discard(sector * r.SECTOR, count * r.SECTOR)
            else:
                self.image.write_zeroes(sector * r.SECTOR, count * r.SECTOR)
        return r.S_OK

    def on_reset(self) -> None:
        try:
            self.image.flush()
        except (BlockError, OSError, VmmError) as exc:
            log.warning("virtio-blk: flush at reset failed: %s", exc)

    def close(self) -> None:
        """The image's fds (a reset, which flushes, came first: VirtioPciDevice.close)."""
        self.image.close()

    # -- snapshots --------------------------------------------------------------------------
    def save(self) -> BlkState:
        return BlkState(self.path, self.format, self.image.readonly, self.serial)

    def load_state(self, state: BlkState) -> None:
        self.serial = state.serial

    @classmethod
    def restore(cls, state: BlkState) -> VirtioBlk:
        from vnix.vmm.block.image import open_image

        return cls(open_image(state.path, state.format, state.readonly), serial=state.serial,
                   path=state.path, fmt=state.format)
