"""virtio-blk requests through the mock driver on a raw image."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vnix.vmm.block.raw import RawImage
from vnix.vmm.devices.virtio.blk import VirtioBlk
from vnix.vmm.devices.virtio.blk.device import F_RO
from vnix.vmm.devices.virtio.mock import bring_up
from vnix.vmm.memory import GuestMemory

S_OK, S_IOERR, S_UNSUPP = 0, 1, 2


@pytest.fixture()
def mem() -> GuestMemory:
    m = GuestMemory([(0, 1 << 20)])
    yield m
    m.close()


def disk(tmp_path: Path, sectors: int = 64) -> Path:
    p = tmp_path / "disk.raw"
    p.write_bytes(bytes(range(256)) * 2 * sectors)
    return p


def header(type_: int, sector: int) -> bytes:
    return struct.pack("<IIQ", type_, 0, sector)


def test_write_then_read_back(mem: GuestMemory, tmp_path: Path) -> None:
    path = disk(tmp_path)
    dev = VirtioBlk(RawImage(str(path)))
    ctl, (drv,), irq = bring_up(dev, mem)
    data = bytes([7]) * 512 + bytes([9]) * 1024
    drv.add_chain([(header(1, 3), False), (data[:700], False), (data[700:], False), (1, True)])
    dev.notify(0)
    (head, length), = drv.used()
    assert length == 1 and irq.queues == [0]
    assert path.read_bytes()[3 * 512 : 6 * 512] == data
    _, bufs = drv.add_chain([(header(0, 3), False), (1000, True), (536, True), (1, True)])
    dev.notify(0)
    assert drv.used()[0][1] == 1537
    assert drv.read(bufs[1]) + drv.read(bufs[2]) == data and drv.read(bufs[3]) == b"\0"


def test_readonly_disk_refuses_writes(mem: GuestMemory, tmp_path: Path) -> None:
    path = disk(tmp_path)
    before = path.read_bytes()
    dev = VirtioBlk(RawImage(str(path), readonly=True))
    assert dev.device_features() & (1 << F_RO)
    _, (drv,), _ = bring_up(dev, mem)
    _, bufs = drv.add_chain([(header(1, 0), False), (bytes(512), False), (1, True)])
    dev.notify(0)
    assert drv.read(bufs[-1]) == bytes([S_IOERR]) and path.read_bytes() == before


@pytest.mark.parametrize("sector, length", [(63, 1024), (64, 512), (1 << 62, 512), (0, 100)])
def test_out_of_range_and_odd_lengths_fail(mem: GuestMemory, tmp_path: Path, sector: int, length: int) -> None:
    path = disk(tmp_path)
    before = path.read_bytes()
    dev = VirtioBlk(RawImage(str(path)))
    _, (drv,), _ = bring_up(dev, mem)
    _, bufs = drv.add_chain([(header(1, sector), False), (bytes(length), False), (1, True)])
    dev.notify(0)
    assert drv.read(bufs[-1]) == bytes([S_IOERR]) and path.read_bytes() == before


def test_flush_get_id_discard_unsupported(mem: GuestMemory, tmp_path: Path) -> None:
    path = disk(tmp_path)
    dev = VirtioBlk(RawImage(str(path)), serial="vnix-disk-0")
    _, (drv,), _ = bring_up(dev, mem)
    _, flush = drv.add_chain([(header(4, 0), False), (1, True)])
    _, ident = drv.add_chain([(header(8, 0), False), (20, True), (1, True)])
    _, disc = drv.add_chain([(header(11, 0), False), (struct.pack("<QII", 2, 2, 0), False), (1, True)])
    _, wz = drv.add_chain([(header(13, 0), False), (struct.pack("<QII", 8, 1, 0), False), (1, True)])
    _, bad = drv.add_chain([(header(99, 0), False), (1, True)])
    dev.notify(0)
    assert drv.read(flush[-1]) == bytes([S_OK])
    assert drv.read(ident[1]) == b"vnix-disk-0".ljust(20, b"\0") and drv.read(ident[-1]) == bytes([S_OK])
    assert drv.read(disc[-1]) == bytes([S_OK]) and drv.read(wz[-1]) == bytes([S_OK])
    assert drv.read(bad[-1]) == bytes([S_UNSUPP])
    content = path.read_bytes()
    assert content[1024:2048] == bytes(1024) and content[4096:4608] == bytes(512)
    assert content[512:1024] == (bytes(range(256)) * 2)


def test_config_space_reports_capacity(tmp_path: Path) -> None:
    dev = VirtioBlk(RawImage(str(disk(tmp_path, 100))))
    assert struct.unpack("<Q", dev.read_config(0, 8))[0] == 100
    assert struct.unpack("<I", dev.read_config(20, 4))[0] == 512  # blk_size
    assert dev.read_config(200, 4) == bytes(4)  # past the structure: zeros


def test_chain_without_status_byte_is_returned_empty(mem: GuestMemory, tmp_path: Path) -> None:
    dev = VirtioBlk(RawImage(str(disk(tmp_path))))
    _, (drv,), _ = bring_up(dev, mem)
    head, _ = drv.add_chain([(header(0, 0), False), (bytes(512), False)])
    dev.notify(0)
    assert drv.used() == [(head, 0)] and dev.metrics.bad_chains == 1
