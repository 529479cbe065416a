"""Drive the 16550A model the way a driver (Linux 8250, a BIOS) does."""
from __future__ import annotations

import pytest

from vnix.vmm.devices.legacy import serial as u
from vnix.vmm.devices.legacy.serial import Serial


class Uart:
    def __init__(self) -> None:
        self.out = bytearray()
        self.levels: list[int] = []
        self.dev = Serial(self.out.extend, self.levels.append)

    def r(self, reg: int) -> int:
        return self.dev.read(reg, 1)[0]

    def w(self, reg: int, value: int) -> None:
        self.dev.write(reg, bytes([value]))

    @property
    def line(self) -> int:
        return self.levels[-1] if self.levels else 0


@pytest.fixture
def uart() -> Uart:
    return Uart()


def test_transmit_and_lsr(uart: Uart) -> None:
    assert uart.r(5) & (u.LSR_THRE | u.LSR_TEMT) == u.LSR_THRE | u.LSR_TEMT
    for ch in b"hi\n":
        uart.w(0, ch)
    assert bytes(uart.out) == b"hi\n"
    assert uart.r(5) & u.LSR_THRE


def test_dlab_switches_offsets_0_and_1_to_the_divisor(uart: Uart) -> None:
    uart.w(3, 0x80)  # DLAB
    uart.w(0, 0x01)  # 115200 baud
    uart.w(1, 0x00)
    assert uart.r(0) == 0x01 and uart.r(1) == 0x00
    uart.w(3, 0x03)  # 8N1, DLAB off
    uart.w(0, ord("x"))
    assert bytes(uart.out) == b"x"  # not swallowed by the divisor latch
    assert uart.r(1) == 0  # IER untouched by the divisor writes


def test_scratch_register(uart: Uart) -> None:
    uart.w(7, 0x5A)
    assert uart.r(7) == 0x5A


def test_receive_without_fifo_holds_one_byte_and_sets_dr(uart: Uart) -> None:
    assert uart.dev.receive(b"ab") == 1
    assert uart.r(5) & u.LSR_DR
    assert uart.r(0) == ord("a")
    assert not uart.r(5) & u.LSR_DR
    assert uart.r(0) == 0  # empty RBR reads 0


def test_fifo_takes_16_bytes_then_refuses(uart: Uart) -> None:
    uart.w(2, u.FCR_ENABLE | u.FCR_CLEAR_RX | u.FCR_CLEAR_TX)
    assert uart.r(2) & 0xC0 == 0xC0  # IIR says FIFOs enabled
    assert uart.dev.receive(bytes(range(20))) == 16
    assert not uart.dev.room.is_set()
    got = bytes(uart.r(0) for _ in range(16))
    assert got == bytes(range(16))
    assert uart.dev.room.is_set()


def test_fcr_clear_rx_empties_the_fifo(uart: Uart) -> None:
    uart.w(2, u.FCR_ENABLE)
    uart.dev.receive(b"abc")
    uart.w(2, u.FCR_ENABLE | u.FCR_CLEAR_RX)
    assert not uart.r(5) & u.LSR_DR


def test_thre_interrupt_raised_on_enable_and_cleared_by_iir_read(uart: Uart) -> None:
    assert uart.r(2) == u.IIR_NONE
    uart.w(1, u.IER_THRE)
    assert uart.line == 1
    assert uart.r(2) == u.IIR_THRE
    assert uart.r(2) == u.IIR_NONE  # reading IIR cleared it
    assert uart.line == 0
    uart.w(0, ord("z"))  # the byte leaves at once: THR empty again
    assert uart.line == 1 and uart.r(2) == u.IIR_THRE


def test_rda_has_priority_over_thre(uart: Uart) -> None:
    uart.w(1, u.IER_THRE | u.IER_RDA)
    uart.dev.receive(b"k")
    assert uart.r(2) == u.IIR_RDA
    assert uart.r(0) == ord("k")
    assert uart.r(2) == u.IIR_THRE


def test_fifo_trigger_level_and_timeout(uart: Uart) -> None:
    uart.w(2, u.FCR_ENABLE | 0x40)  # trigger at 4 bytes
    uart.w(1, u.IER_RDA)
    uart.dev.receive(b"ab")
    assert uart.r(2) == u.IIR_TIMEOUT | 0xC0  # below the trigger: character timeout
    uart.dev.receive(b"cd")
    assert uart.r(2) == u.IIR_RDA | 0xC0
    for _ in range(4):
        uart.r(0)
    assert uart.r(2) == u.IIR_NONE | 0xC0 and uart.line == 0


def test_overrun_sets_oe_and_rls_interrupt_until_lsr_read(uart: Uart) -> None:
    uart.w(1, u.IER_RLS)
    uart.w(4, u.MCR_LOOP)
    uart.w(0, 1)
    uart.w(0, 2)  # no FIFO: the second byte overruns
    assert uart.r(2) == u.IIR_RLS
    assert uart.r(5) & u.LSR_OE
    assert not uart.r(5) & u.LSR_OE  # cleared by the read


def test_loopback_as_linux_probes_it(uart: Uart) -> None:
    # drivers/tty/serial/8250/8250_port.c autoconfig(): MCR = LOOP | OUT2 | RTS -> MSR & 0xF0 == 0x90
    uart.w(4, u.MCR_LOOP | 0x0A)
    assert uart.r(6) & 0xF0 == 0x90
    uart.w(0, ord("L"))
    assert bytes(uart.out) == b""  # looped back, not sent
    assert uart.r(0) == ord("L")
    uart.w(4, 0x0B)
    assert uart.r(6) & 0xF0 == u.MSR_DCD | u.MSR_DSR | u.MSR_CTS


def test_garbage_accesses_do_not_break_the_model(uart: Uart) -> None:
    assert uart.dev.read(0, 4) == b"\xff" * 4
    uart.dev.write(0, b"ab")  # a word write to a byte register is dropped
    for reg in range(8):
        for value in (0, 0xFF, 0x80):
            uart.w(reg, value)
            uart.r(reg)
    # After any garbage, a driver that programs the UART again gets a working port.
    uart.w(4, 0x0B)
    uart.w(3, 0x03)
    uart.w(2, 0x07)
    uart.out.clear()
    uart.w(0, ord("!"))
    assert bytes(uart.out) == b"!"
    assert uart.r(5) & u.LSR_THRE
