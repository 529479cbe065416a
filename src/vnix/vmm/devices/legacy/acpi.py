"""ACPI hardware-reduced sleep and reset registers (ACPI 6.4, sections 4.8.3.7 and 4.8.3.6).

A hardware-reduced FADT names a SLEEP_CONTROL_REG, a SLEEP_STATUS_REG and a RESET_REG instead
of PM1 blocks. vnix puts them in I/O space, one byte each (the arch code's FADT points here):

=====  ===================  ========================================================
port   register             what a write does
=====  ===================  ========================================================
0x600  SLEEP_CONTROL_REG    SLP_EN (bit 5) with SLP_TYP (bits 4:2) == 5 -> S5: power off
0x601  SLEEP_STATUS_REG     WAK_STS (bit 7) is write-one-to-clear; reads say 0
0x602  RESET_REG            the FADT's RESET_VALUE (1) resets the machine
=====  ===================  ========================================================

The \\_S5 package in the DSDT must carry SLP_TYP 5 to match. Other sleep types (S1-S4) are not
supported and are ignored; the guest keeps running.
"""
from __future__ import annotations

from vnix.vmm.exitcodes import POWEROFF, REBOOT, Stop

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable

BASE_PORT = 0x600
PORT_COUNT = 3
SLEEP_CONTROL = 0
SLEEP_STATUS = 1
RESET = 2

SLP_EN = 1 << 5
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x7
SLP_TYP_S5 = 5
RESET_VALUE = 1
WAK_STS = 1 << 7


class AcpiRegisters:
    def __init__(self, on_stop: Callable[[Stop], None]) -> None:
        self._on_stop = on_stop
        self.ignored_sleeps = 0

    def read(self, offset: int, size: int) -> bytes:
        return b"\x00" * size

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if offset == SLEEP_CONTROL and value & SLP_EN:
            if (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5:
                self._on_stop(Stop(POWEROFF, "guest powered off (ACPI S5)", report=False))
            else:
                self.ignored_sleeps += 1
        elif offset == RESET and value == RESET_VALUE:
            self._on_stop(Stop(REBOOT, "guest reset (ACPI reset register)"))
