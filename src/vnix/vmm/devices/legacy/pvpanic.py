"""The pvpanic ISA device at port 0x505 (QEMU docs/specs/pvpanic.rst).

Reading the port returns the events the device supports (bit 0 PANICKED, bit 1 CRASH_LOADED);
the guest writes one of them when it happens. PANICKED ends the VMM with the guest-panic status;
CRASH_LOADED (a kdump kernel is taking over) is logged and the guest keeps running, as in QEMU.
Bits the device did not offer are ignored.
"""
from __future__ import annotations

import sys
from vnix.vmm.exitcodes import GUEST_PANIC, Stop

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable

PORT = 0x505
PANICKED = 0x01
CRASH_LOADED = 0x02
EVENTS = PANICKED | CRASH_LOADED


class PvPanic:
    def __init__(self, on_stop: Callable[[Stop], None]) -> None:
        self._on_stop = on_stop
        self.crash_loaded = 0

    def read(self, offset: int, size: int) -> bytes:
        return bytes([EVENTS]) + b"\x00" * (size - 1)

    def write(self, offset: int, data: bytes) -> None:
        value = data[0] & EVENTS
        if value & PANICKED:
            self._on_stop(Stop(GUEST_PANIC, "guest panicked (pvpanic)"))
        elif value & CRASH_LOADED:
            self.crash_loaded += 1
            print("vnix-vmm: guest loaded a crash kernel (pvpanic)", file=sys.stderr)
