"""The snapshot file format, the state codec, and the save/restore pairs that need no KVM."""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import pytest

from vnix.vmm.devices.legacy.i8042 import I8042
from vnix.vmm.devices.legacy.rtc import Rtc
from vnix.vmm.devices.legacy.serial import Serial
from vnix.vmm.memory import GuestMemory
from vnix.vmm.snapshot import SnapshotError, codec
from vnix.vmm.snapshot import format as fmt
from vnix.vmm.snapshot.dirty import bitmap_pages
from vnix.vmm.snapshot.save import populated_extents
from vnix.vmm.snapshot.state import VmState


def write_file(path: Path, state: bytes = b'{"x":1}', pages: int = 4) -> fmt.Header:
    w = fmt.Writer(str(path), fmt.KIND_FULL)
    w.add_bytes("state", state)
    w.add_bytes("extents", fmt.encode_extents([(1, 2)]))
    data = memoryview(bytes(range(256)) * 32)  # two pages
    w.add_memory(pages * fmt.PAGE, [(fmt.PAGE, data)])
    return w.finish()


def read(path: Path) -> fmt.Header:
    fd = os.open(path, os.O_RDONLY)
    try:
        return fmt.read_header(fd, str(path))
    finally:
        os.close(fd)


def test_a_written_file_reads_back_with_page_aligned_sections(tmp_path: Path) -> None:
    p = tmp_path / "s.snap"
    written = write_file(p)
    h = read(p)
    assert h.snapshot_id == written.snapshot_id and h.kind == fmt.KIND_FULL
    assert all(s.offset % fmt.PAGE == 0 for s in h.sections.values())
    mem = h.sections["memory"]
    raw = p.read_bytes()
    assert raw[mem.offset : mem.offset + fmt.PAGE] == bytes(fmt.PAGE)  # a hole reads as zeros
    assert raw[mem.offset + fmt.PAGE : mem.offset + 3 * fmt.PAGE] == bytes(range(256)) * 32
    fd = os.open(p, os.O_RDONLY)
    try:
        assert fmt.read_section(fd, str(p), h.sections["state"]) == b'{"x":1}'
        fmt.verify_memory(fd, str(p), mem, [(1, 2)], dense=True)
    finally:
        os.close(fd)


@pytest.mark.parametrize("where,message", [
    (0, "bad magic"), (8, "version"), (20, "checksum"), (70, "checksum"), ("truncate", "truncated"),
    ("pad", "truncated or padded"),
])
def test_damaged_headers_are_refused(tmp_path: Path, where: object, message: str) -> None:
    p = tmp_path / "s.snap"
    write_file(p)
    raw = bytearray(p.read_bytes())
    if where == "truncate":
        del raw[-fmt.PAGE:]
    elif where == "pad":
        raw += b"\0"
    else:
        assert isinstance(where, int)
        raw[where] ^= 0x40
    p.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match=message):
        read(p)


def test_a_flipped_state_byte_or_memory_byte_is_found(tmp_path: Path) -> None:
    p = tmp_path / "s.snap"
    h = write_file(p)
    raw = bytearray(p.read_bytes())
    raw[h.sections["state"].offset] ^= 1
    raw[h.sections["memory"].offset + fmt.PAGE + 5] ^= 1
    p.write_bytes(bytes(raw))
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(SnapshotError, match="'state' checksum"):
            fmt.read_section(fd, str(p), h.sections["state"])
        with pytest.raises(SnapshotError, match="memory checksum"):
            fmt.verify_memory(fd, str(p), h.sections["memory"], [(1, 2)], dense=True)
    finally:
        os.close(fd)


def test_extents_must_be_ordered_and_inside_ram() -> None:
    assert fmt.decode_extents(fmt.encode_extents([(0, 1), (5, 3)]), 8) == [(0, 1), (5, 3)]
    for bad in ([(5, 1), (0, 1)], [(7, 2)], [(0, 0)], [(0, 2), (1, 1)]):
        with pytest.raises(SnapshotError):
            fmt.decode_extents(fmt.encode_extents(bad), 8)
    assert list(fmt.runs([1, 2, 3, 7, 9, 10])) == [(1, 3), (7, 1), (9, 2)]


def test_codec_builds_only_registered_state_types() -> None:
    state = VmState([b"\x01" * 3, b"", b"\xff"], b"pit", 123, 4)
    assert codec.loads(codec.dumps(state)) == state
    with pytest.raises(SnapshotError, match="unknown type"):
        codec.loads(b'{"@": "Popen", "args": ["sh"]}')
    with pytest.raises(SnapshotError, match="unknown fields"):
        codec.loads(b'{"@": "VmState", "irqchips": [], "pit2": "", "clock": 0, "evil": 1}')
    with pytest.raises(SnapshotError, match="JSON"):
        codec.loads(b"{not json")
    with pytest.raises(SnapshotError, match="nested"):
        codec.loads(b"[" * 100 + b"]" * 100)


def test_serial_fifo_and_registers_survive_save_restore() -> None:
    out: list[bytes] = []
    a = Serial(out.append, lambda level: None)
    a.write(2, b"\x01")  # FIFO on
    a.write(1, b"\x01")  # receive interrupt on
    a.write(7, b"\x42")
    assert a.receive(b"hello") == 5
    b = Serial(out.append, lambda level: None)
    b.restore(a.save())
    assert b.read(7, 1) == b"\x42" and b.read(1, 1) == b"\x01"
    assert bytes(b.read(0, 1)[0] for _ in range(5)) == b"hello"
    assert not b.read(5, 1)[0] & 0x01  # the FIFO is empty now


def test_i8042_and_rtc_survive_save_restore() -> None:
    k = I8042(lambda: None, lambda level: None)
    k.write(4, b"\xaa")  # self test: 0x55 waits at 0x60
    k2 = I8042(lambda: None, lambda level: None)
    k2.restore(k.save())
    assert k2.read(4, 1)[0] & 0x01 and k2.read(0, 1) == b"\x55"
    r = Rtc(64 << 20)
    r.write(0, b"\x0b")
    r.write(1, b"\x06")  # binary, 24 h
    r.write(1, b"\x86")  # SET on
    r.write(0, b"\x09")
    r.write(1, b"\x10")  # year 16
    r.write(0, b"\x0b")
    r.write(1, b"\x06")  # SET off: the new time becomes an offset
    r2 = Rtc(64 << 20)
    r2.restore(r.save())
    r2.write(0, b"\x09")
    assert r2.read(1, 1) == b"\x10"
    assert r2.cmos[0x34:0x36] == r.cmos[0x34:0x36]


def test_guest_memory_records_what_the_vmm_writes() -> None:
    mem = GuestMemory([(0, 64 * 4096)])
    mem.write(0x1000, b"x")  # before tracking: not recorded
    mem.track_writes(True)
    mem.write(0x2FFF, b"ab")  # spans pages 2 and 3
    mem.fill(0x5000, 10)
    mem.view(0x8000, 16, write=False)
    mem.view(0x9000, 16)
    mem.madvise(0xA000, 4096, mmap.MADV_DONTNEED)
    assert mem.take_written() == {2, 3, 5, 9, 10}
    assert mem.take_written() == set()
    pop = bytes(mem.populated())
    assert pop[1] and pop[2] and pop[3] and not pop[40]
    assert populated_extents(mem)[0][0] == 1


def test_guest_memory_from_a_file_is_private(tmp_path: Path) -> None:
    p = tmp_path / "ram"
    p.write_bytes(b"\0" * 4096 + b"A" * 4096 + b"B" * 8192)
    fd = os.open(p, os.O_RDONLY)
    try:
        mem = GuestMemory([(0, 8192), (1 << 20, 8192)], file=(fd, 0))
    finally:
        os.close(fd)
    assert mem.read(4096, 2) == b"AA" and mem.read((1 << 20) + 100, 1) == b"B"
    mem.write(4096, b"Z")
    assert mem.read(4096, 1) == b"Z" and p.read_bytes()[4096:4097] == b"A"  # copy on write


def test_kvm_dirty_bitmap_pages() -> None:
    bitmap = struct.pack("<QQ", (1 << 0) | (1 << 63), 1 << 2)
    assert list(bitmap_pages(bitmap, 256)) == [256, 256 + 63, 256 + 66]
