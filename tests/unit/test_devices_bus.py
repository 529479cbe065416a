from __future__ import annotations

import pytest

from vnix.vmm.devices.bus import BusError, MmioBus, PioBus


class Recorder:
    def __init__(self, fill: int = 0x42) -> None:
        self.fill = fill
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return bytes([self.fill]) * size

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))


def test_access_reaches_device_with_offset() -> None:
    bus = PioBus()
    dev = Recorder()
    bus.insert(0x3F8, 8, dev, "serial")
    assert bus.read(0x3FD, 1) == b"\x42"
    assert bus.write(0x3F8, b"A")
    assert dev.reads == [(5, 1)] and dev.writes == [(0, b"A")]


def test_overlap_is_refused_and_names_both() -> None:
    bus = PioBus()
    bus.insert(0x60, 5, Recorder(), "i8042")
    with pytest.raises(BusError, match="overlaps i8042"):
        bus.insert(0x64, 1, Recorder(), "other")
    bus.insert(0x65, 1, Recorder(), "adjacent")  # touching is fine
    with pytest.raises(BusError):
        bus.insert(0xFFFF, 2, Recorder(), "past the end")


def test_unassigned_port_reads_all_ones_like_qemu_and_writes_are_counted() -> None:
    bus = PioBus()
    assert bus.read(0x80, 1) == b"\xff"
    assert bus.read(0x80, 4) == b"\xff\xff\xff\xff"
    assert not bus.write(0x80, b"\x12")
    assert bus.unassigned_writes[0x80] == 1 and bus.unassigned_reads[0x80] == 2


def test_unassigned_mmio_reads_zero_like_qemu() -> None:
    bus = MmioBus()
    assert bus.read(0xFEB0_0000, 4) == b"\x00" * 4


def test_access_straddling_device_end_is_unassigned() -> None:
    bus = PioBus()
    dev = Recorder()
    bus.insert(0x500, 2, dev, "dev")
    assert bus.read(0x501, 2) == b"\xff\xff"
    assert dev.reads == []


def test_remove() -> None:
    bus = MmioBus()
    bus.insert(0xD000_0000, 0x1000, Recorder(), "x")
    assert bus.remove(0xD000_0000).name == "x"
    assert bus.find(0xD000_0000) is None
    with pytest.raises(BusError):
        bus.remove(0xD000_0000)
