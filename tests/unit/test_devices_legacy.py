"""i8042, CMOS RTC, isa-debug-exit, pvpanic, ACPI sleep/reset registers."""
from __future__ import annotations

import time

from vnix.vmm.devices.legacy.acpi import AcpiRegisters
from vnix.vmm.devices.legacy.debug_exit import DebugExit
from vnix.vmm.devices.legacy.i8042 import I8042
from vnix.vmm.devices.legacy.pvpanic import PvPanic
from vnix.vmm.devices.legacy.rtc import Rtc
from vnix.vmm.exitcodes import GUEST_PANIC, POWEROFF, REBOOT, Stop


def test_i8042_reset_pulse_and_status() -> None:
    resets: list[bool] = []
    dev = I8042(lambda: resets.append(True), lambda level: None)
    assert dev.read(4, 1)[0] & 0x04  # system flag
    assert not dev.read(4, 1)[0] & 0x01  # nothing to read
    dev.write(4, b"\xaa")  # self test
    assert dev.read(4, 1)[0] & 0x01
    assert dev.read(0, 1) == b"\x55"
    dev.write(4, b"\x20")  # read the command byte
    ctr = dev.read(0, 1)[0]
    dev.write(4, b"\x60")
    dev.write(0, bytes([ctr & ~0x01]))
    dev.write(4, b"\x20")
    assert dev.read(0, 1)[0] == ctr & ~0x01
    dev.write(0, b"\xff")  # keyboard reset -> ACK, BAT OK
    assert dev.read(0, 1) + dev.read(0, 1) == b"\xfa\xaa"
    assert resets == []
    dev.write(4, b"\xfe")
    assert resets == [True]


def test_i8042_output_port_reset() -> None:
    resets: list[bool] = []
    dev = I8042(lambda: resets.append(True), lambda level: None)
    dev.write(4, b"\xd1")
    dev.write(0, b"\x00")
    assert resets == [True]


def rtc_read(rtc: Rtc, reg: int) -> int:
    rtc.write(0, bytes([reg]))
    return rtc.read(1, 1)[0]


def rtc_write(rtc: Rtc, reg: int, value: int) -> None:
    rtc.write(0, bytes([reg]))
    rtc.write(1, bytes([value]))


def bcd(v: int) -> int:
    return int(f"{v:x}")


def test_rtc_time_in_bcd_matches_host() -> None:
    rtc = Rtc(256 << 20)
    now = time.gmtime()
    assert bcd(rtc_read(rtc, 0x09)) == now.tm_year % 100
    assert bcd(rtc_read(rtc, 0x32)) == now.tm_year // 100
    assert bcd(rtc_read(rtc, 0x08)) == now.tm_mon
    assert bcd(rtc_read(rtc, 0x07)) == now.tm_mday
    assert rtc_read(rtc, 0x0D) & 0x80
    assert rtc_read(rtc, 0x0B) & 0x02  # 24-hour mode


def test_rtc_binary_mode() -> None:
    rtc = Rtc(256 << 20)
    rtc_write(rtc, 0x0B, 0x06)
    assert rtc_read(rtc, 0x09) == time.gmtime().tm_year % 100


def test_rtc_guest_sets_clock_without_touching_host() -> None:
    rtc = Rtc(256 << 20)
    rtc_write(rtc, 0x0B, 0x82)  # SET, 24h, BCD
    for reg, value in ((0x32, 0x20), (0x09, 0x01), (0x08, 0x02), (0x07, 0x03), (0x04, 0x04), (0x02, 0x05), (0x00, 0x06)):
        rtc_write(rtc, reg, value)
    rtc_write(rtc, 0x0B, 0x02)
    assert rtc_read(rtc, 0x09) == 0x01 and rtc_read(rtc, 0x32) == 0x20
    assert rtc_read(rtc, 0x04) == 0x04


def test_rtc_memory_size_bytes() -> None:
    rtc = Rtc(256 << 20, 1 << 30)
    assert rtc_read(rtc, 0x15) | rtc_read(rtc, 0x16) << 8 == 640
    assert rtc_read(rtc, 0x17) | rtc_read(rtc, 0x18) << 8 == 0xFFFF  # KiB above 1 MiB, capped at 65535 as QEMU does
    assert rtc_read(rtc, 0x34) | rtc_read(rtc, 0x35) << 8 == (240 << 20) // 65536
    assert rtc_read(rtc, 0x5B) | rtc_read(rtc, 0x5C) << 8 == (1 << 30) // 65536


def test_rtc_scratch_nvram_and_bad_index() -> None:
    rtc = Rtc(64 << 20)
    rtc_write(rtc, 0x40, 0x77)
    assert rtc_read(rtc, 0x40) == 0x77
    rtc.write(0, b"\xff")  # NMI mask bit + index 0x7f
    assert rtc.index == 0x7F


def test_debug_exit_status_like_qemu() -> None:
    stops: list[Stop] = []
    dev = DebugExit(stops.append)
    dev.write(0, b"\x01")
    dev.write(0, b"\x00")
    dev.write(1, b"\x10\x00")
    assert [s.status for s in stops] == [3, 1, 0x21]


def test_pvpanic() -> None:
    stops: list[Stop] = []
    dev = PvPanic(stops.append)
    assert dev.read(0, 1) == b"\x03"
    dev.write(0, b"\x02")
    assert stops == [] and dev.crash_loaded == 1
    dev.write(0, b"\xfc")  # bits not offered: ignored
    assert stops == []
    dev.write(0, b"\x01")
    assert stops[0].status == GUEST_PANIC


def test_acpi_sleep_and_reset() -> None:
    stops: list[Stop] = []
    dev = AcpiRegisters(stops.append)
    dev.write(0, bytes([5 << 2]))  # SLP_TYP without SLP_EN: nothing
    dev.write(0, bytes([(3 << 2) | 0x20]))  # S3: ignored
    assert stops == []
    dev.write(2, b"\x02")  # not the reset value
    assert stops == []
    dev.write(0, bytes([(5 << 2) | 0x20]))
    dev.write(2, b"\x01")
    assert [s.status for s in stops] == [POWEROFF, REBOOT]
