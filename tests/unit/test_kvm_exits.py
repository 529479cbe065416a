"""Decoding hand-made kvm_run pages (no /dev/kvm needed)."""
from __future__ import annotations

import ctypes

import pytest

from vnix.kvm import ioctls as k
from vnix.kvm import structs as s
from vnix.kvm.exits import (
    FailEntry,
    Hlt,
    InternalError,
    Intr,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unknown,
    complete_io_in,
    complete_mmio_read,
    decode,
)

PAGE = 4096


def page_with(run: s.kvm_run) -> bytearray:
    page = bytearray(PAGE)
    page[: ctypes.sizeof(run)] = bytes(run)
    return page


def io_page(direction: int, port: int, size: int, count: int, data: bytes = b"") -> bytearray:
    run = s.kvm_run(exit_reason=k.KVM_EXIT_IO)
    run.exit.io.direction = direction
    run.exit.io.port = port
    run.exit.io.size = size
    run.exit.io.count = count
    run.exit.io.data_offset = 0x1000 - 0x100  # where the kernel puts it: inside the run page
    page = page_with(run)
    page[0xF00 : 0xF00 + len(data)] = data
    return page


def test_io_out_single_byte() -> None:
    assert decode(io_page(k.KVM_EXIT_IO_OUT, 0x3F8, 1, 1, b"A")) == IoOut(0x3F8, 1, b"A", 1)


def test_io_out_string_carries_every_item() -> None:
    exit = decode(io_page(k.KVM_EXIT_IO_OUT, 0x501, 2, 3, b"\x01\x00\x02\x00\x03\x00"))
    assert exit == IoOut(0x501, 2, b"\x01\x00\x02\x00\x03\x00", 3)


def test_io_in_and_completion_writes_data_where_kvm_reads_it() -> None:
    page = io_page(k.KVM_EXIT_IO_IN, 0x3FD, 1, 1)
    exit = decode(page)
    assert isinstance(exit, IoIn) and exit.port == 0x3FD and exit.size == 1
    complete_io_in(page, exit, b"\x60")
    assert page[0xF00] == 0x60
    with pytest.raises(ValueError):
        complete_io_in(page, exit, b"\x60\x00")


def test_io_with_data_outside_page_is_unknown() -> None:
    page = io_page(k.KVM_EXIT_IO_OUT, 0x80, 4, 0x10000)
    assert decode(page) == Unknown(k.KVM_EXIT_IO)


def test_io_with_bad_size_is_unknown() -> None:
    assert decode(io_page(k.KVM_EXIT_IO_OUT, 0x80, 3, 1, b"abc")) == Unknown(k.KVM_EXIT_IO)


def test_mmio_write_and_read() -> None:
    run = s.kvm_run(exit_reason=k.KVM_EXIT_MMIO)
    run.exit.mmio.phys_addr = 0xD000_0000
    run.exit.mmio.len = 4
    run.exit.mmio.is_write = 1
    run.exit.mmio.data[:4] = [0x78, 0x56, 0x34, 0x12]
    assert decode(page_with(run)) == MmioWrite(0xD000_0000, b"\x78\x56\x34\x12")

    run.exit.mmio.is_write = 0
    run.exit.mmio.len = 2
    page = page_with(run)
    exit = decode(page)
    assert exit == MmioRead(0xD000_0000, 2)
    assert isinstance(exit, MmioRead)
    complete_mmio_read(page, exit, b"\xaa\xbb")
    back = s.kvm_run.from_buffer_copy(page[: ctypes.sizeof(s.kvm_run)])
    assert list(back.exit.mmio.data[:2]) == [0xAA, 0xBB]


def test_simple_exits() -> None:
    assert decode(page_with(s.kvm_run(exit_reason=k.KVM_EXIT_HLT))) == Hlt()
    assert decode(page_with(s.kvm_run(exit_reason=k.KVM_EXIT_SHUTDOWN))) == Shutdown()
    assert decode(page_with(s.kvm_run(exit_reason=k.KVM_EXIT_INTR))) == Intr()
    assert decode(page_with(s.kvm_run(exit_reason=12345))) == Unknown(12345)


def test_system_event_and_internal_error_carry_their_data() -> None:
    run = s.kvm_run(exit_reason=k.KVM_EXIT_SYSTEM_EVENT)
    run.exit.system_event.type = k.KVM_SYSTEM_EVENT_RESET
    assert decode(page_with(run)) == SystemEvent(k.KVM_SYSTEM_EVENT_RESET, ())

    run = s.kvm_run(exit_reason=k.KVM_EXIT_INTERNAL_ERROR)
    run.exit.internal.suberror = k.KVM_INTERNAL_ERROR_EMULATION
    run.exit.internal.ndata = 2
    run.exit.internal.data[0] = 0xDEAD
    run.exit.internal.data[1] = 0xBEEF
    assert decode(page_with(run)) == InternalError(1, (0xDEAD, 0xBEEF))

    run.exit.internal.ndata = 1000  # a lying count is clamped to the array
    exit = decode(page_with(run))
    assert isinstance(exit, InternalError) and len(exit.data) == 16


def test_fail_entry() -> None:
    run = s.kvm_run(exit_reason=k.KVM_EXIT_FAIL_ENTRY)
    run.exit.fail_entry.hardware_entry_failure_reason = 0x80000021
    run.exit.fail_entry.cpu = 1
    assert decode(page_with(run)) == FailEntry(0x80000021, 1)


def test_exits_are_frozen() -> None:
    exit = IoOut(1, 1, b"x")
    with pytest.raises(AttributeError):
        exit.port = 2  # type: ignore[misc]
