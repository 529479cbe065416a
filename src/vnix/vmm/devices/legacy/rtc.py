"""The MC146818 CMOS real-time clock and NVRAM at ports 0x70 (index) / 0x71 (data).

Registers (MC146818A data sheet; QEMU hw/rtc/mc146818rtc.c for the PC's CMOS memory map):

=====  =====================================  =====  ======================================
index  meaning                                index  meaning
=====  =====================================  =====  ======================================
0x00   seconds                                0x0A   status A (bit 7 UIP, divider 010 = 32 kHz)
0x02   minutes                                0x0B   status B (bit 7 SET, bit 2 binary, bit 1 24h)
0x04   hours (bit 7 = PM in 12-hour mode)     0x0C   status C (interrupt flags; cleared by read)
0x06   day of week (1 = Sunday)               0x0D   status D (bit 7 VRT: the battery is fine)
0x07   day of month                           0x15/6 base memory in KiB (640)
0x08   month                                  0x17/8 and 0x30/1: KiB of RAM from 1 MiB to 64 MiB
0x09   year (two digits)                      0x34/5 64 KiB units of RAM from 16 MiB to 4 GiB
0x32   century                                0x5B-D 64 KiB units of RAM above 4 GiB
=====  =====================================  =====  ======================================

Time reads come from the host clock plus an offset; a guest that sets the clock (SET bit, write
the registers, clear SET) moves the offset, never the host's clock. Bit 7 of the index is the
NMI mask, ignored here as in QEMU. Alarms and periodic interrupts are not modelled.
"""
from __future__ import annotations

import threading
import time

from vnix.vmm.record import Record

INDEX_PORT = 0x70

REG_SECONDS = 0x00
REG_MINUTES = 0x02
REG_HOURS = 0x04
REG_WEEKDAY = 0x06
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = 0x32
TIME_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY)

B_SET = 0x80
B_BINARY = 0x04
B_24H = 0x02
D_VRT = 0x80

MIB = 1024 * 1024


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm); this
    avoids importing calendar/datetime into the VMM process."""
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError("bad date")
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class RtcState(Record):
    """The index register, the 128 bytes of CMOS, and the guest's clock as an offset from the
    host's (so after a restore the RTC shows the host's time plus that offset, as a battery-backed
    clock would)."""

    __slots__ = ("index", "cmos", "offset")

    def __init__(self, index: int, cmos: bytes, offset: float) -> None:
        self.index, self.cmos, self.offset = index, cmos, offset


class Rtc:
    def __init__(self, ram_below_4g: int, ram_above_4g: int = 0) -> None:
        self._lock = threading.Lock()
        self.index = 0
        self.cmos = bytearray(128)
        self.cmos[REG_A] = 0x26
        self.cmos[REG_B] = B_24H
        self.cmos[REG_D] = D_VRT
        self.offset = 0.0  # guest time minus host time, seconds
        self._set_memory_size(ram_below_4g, ram_above_4g)

    def _set_memory_size(self, below: int, above: int) -> None:
        self.cmos[0x15], self.cmos[0x16] = 640 & 0xFF, 640 >> 8
        ext_kib = min(max(below - MIB, 0) // 1024, 0xFFFF)  # 1 MiB..64 MiB
        for lo in (0x17, 0x30):
            self.cmos[lo], self.cmos[lo + 1] = ext_kib & 0xFF, ext_kib >> 8
        high = min(max(below - 16 * MIB, 0) // 65536, 0xFFFF)  # 16 MiB..4 GiB
        self.cmos[0x34], self.cmos[0x35] = high & 0xFF, high >> 8
        above_units = above // 65536
        self.cmos[0x5B], self.cmos[0x5C], self.cmos[0x5D] = (
            above_units & 0xFF,
            (above_units >> 8) & 0xFF,
            (above_units >> 16) & 0xFF,
        )

    # -- time -----------------------------------------------------------------------------------
    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _from_bcd(value)

    def _time_reg(self, reg: int) -> int:
        if self.cmos[REG_B] & B_SET:
            return self.cmos[reg]  # while SET is on, the guest sees what it wrote
        t = time.gmtime(time.time() + self.offset)
        if reg == REG_SECONDS:
            return self._encode(t.tm_sec)
        if reg == REG_MINUTES:
            return self._encode(t.tm_min)
        if reg == REG_HOURS:
            if self.cmos[REG_B] & B_24H:
                return self._encode(t.tm_hour)
            hour12 = t.tm_hour % 12 or 12
            return self._encode(hour12) | (0x80 if t.tm_hour >= 12 else 0)
        if reg == REG_WEEKDAY:
            return self._encode((t.tm_wday + 1) % 7 + 1)  # tm_wday 0 = Monday; RTC 1 = Sunday
        if reg == REG_DAY:
            return self._encode(t.tm_mday)
        if reg == REG_MONTH:
            return self._encode(t.tm_mon)
        if reg == REG_YEAR:
            return self._encode(t.tm_year % 100)
        return self._encode(t.tm_year // 100)  # century

    def _latch_time(self) -> None:
        """SET was turned on: freeze the current time into CMOS so the guest can edit it."""
        for reg in TIME_REGS:
            self.cmos[reg] = self._time_reg(reg)

    def _commit_time(self) -> None:
        """SET was turned off: the time the guest wrote becomes the new offset."""
        try:
            hour_raw = self.cmos[REG_HOURS]
            if self.cmos[REG_B] & B_24H:
                hour = self._decode(hour_raw)
            else:
                hour = self._decode(hour_raw & 0x7F) % 12 + (12 if hour_raw & 0x80 else 0)
            year = self._decode(self.cmos[REG_CENTURY]) * 100 + self._decode(self.cmos[REG_YEAR])
            days = _days_from_civil(year, self._decode(self.cmos[REG_MONTH]), self._decode(self.cmos[REG_DAY]))
            when = days * 86400 + hour * 3600 + self._decode(self.cmos[REG_MINUTES]) * 60 + self._decode(self.cmos[REG_SECONDS])
        except (ValueError, OverflowError):
            return  # nonsense from the guest: keep the old clock
        self.offset = when - time.time()

    # -- bus device -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if size != 1:
            return b"\xff" * size
        with self._lock:
            if offset == 0:
                return b"\xff"  # the index register is write-only on the PC
            reg = self.index
            if reg in TIME_REGS:
                return bytes([self._time_reg(reg)])
            value = self.cmos[reg]
            if reg == REG_C:
                self.cmos[REG_C] = 0
            return bytes([value])

    def write(self, offset: int, data: bytes) -> None:
        if len(data) != 1:
            return
        value = data[0]
        with self._lock:
            if offset == 0:
                self.index = value & 0x7F  # bit 7 masks NMI; ignored
                return
            reg = self.index
            if reg == REG_B:
                was_set = self.cmos[REG_B] & B_SET
                if value & B_SET and not was_set:
                    self._latch_time()
                    self.cmos[REG_B] = value
                elif was_set and not value & B_SET:
                    self.cmos[REG_B] = value
                    self._commit_time()
                else:
                    self.cmos[REG_B] = value
            elif reg == REG_A:
                self.cmos[REG_A] = value & 0x7F  # UIP is read-only
            elif reg in (REG_C, REG_D):
                pass  # read-only
            elif reg in TIME_REGS:
                if self.cmos[REG_B] & B_SET:
                    self.cmos[reg] = value
            else:
                self.cmos[reg] = value

    # -- snapshots ------------------------------------------------------------------------------
    def save(self) -> RtcState:
        with self._lock:
            return RtcState(self.index, bytes(self.cmos), self.offset)

    def restore(self, state: RtcState) -> None:
        if len(state.cmos) != len(self.cmos):
            raise ValueError(f"RTC state has {len(state.cmos)} CMOS bytes, not {len(self.cmos)}")
        with self._lock:
            self.index = state.index & 0x7F
            self.cmos[:] = state.cmos
            self.offset = float(state.offset)
