"""QEMU's ``isa-debug-exit`` (``-device isa-debug-exit,iobase=0x501,iosize=2``).

A write of value V to any of its ports ends the VMM with status ``(V << 1) | 1``
(hw/misc/debugexit.c), so a test guest can report pass/fail as an exit status. Only present with
``--debug-exit``. Reads return 0xFF, as an unassigned port does.
"""
from __future__ import annotations

from vnix.vmm.exitcodes import Stop, debug_exit_status

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable

PORT = 0x501
PORT_COUNT = 2


class DebugExit:
    def __init__(self, on_stop: Callable[[Stop], None]) -> None:
        self._on_stop = on_stop

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        self._on_stop(Stop(debug_exit_status(value), f"guest wrote {value:#x} to isa-debug-exit", report=False))
