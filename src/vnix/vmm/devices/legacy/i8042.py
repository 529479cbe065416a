"""The i8042 keyboard controller, enough for a guest to find it and to reset the machine.

Ports (IBM PC/AT technical reference; Linux drivers/input/serio/i8042.h): 0x60 data,
0x64 status (read) / command (write). Command 0xFE pulses the CPU reset line: the VMM ends with
the reboot status. No keyboard is attached: keyboard commands get ACK (0xFA) so that probing
guests carry on. The one key combination the host can press is Ctrl-Alt-Del
(:meth:`I8042.send_ctrl_alt_del`, the control API's graceful stop, as Firecracker's
``SendCtrlAltDel``): make and break codes in scan code set 1 when the controller translates
(command byte bit 6, XLATE, as a BIOS leaves it) and set 2 otherwise, one IRQ 1 edge a byte.
"""
from __future__ import annotations

import threading
from collections import deque

from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable

DATA_PORT = 0x60
COMMAND_PORT = 0x64
IRQ_KEYBOARD = 1

# status register
STATUS_OBF = 0x01  # output buffer full (data for the guest at 0x60)
STATUS_IBF = 0x02  # input buffer full (never: we consume at once)
STATUS_SYS = 0x04  # system flag: POST passed
STATUS_CMD = 0x08  # last write was to 0x64

# controller commands
CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_WRITE_AUX = 0xD4
CMD_PULSE_RESET = 0xFE

CTR_KBD_INT = 0x01
CTR_KBD_DISABLED = 0x10
CTR_XLATE = 0x40
# Ctrl, Alt, Del pressed then released (Del is an extended key: E0 prefix). Set 1 break = make | 0x80;
# set 2 break = F0 before the make code.
CTRL_ALT_DEL_SET1 = bytes([0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])
CTRL_ALT_DEL_SET2 = bytes([0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14])
KBD_ACK = 0xFA
KBD_RESET = 0xFF
KBD_BAT_OK = 0xAA
KBD_IDENTIFY = 0xF2


class I8042State(Record):
    """Controller registers, the bytes waiting for the guest at 0x60, a command waiting for data."""

    __slots__ = ("ctr", "status", "outport", "out", "expect")

    def __init__(self, ctr: int, status: int, outport: int, out: bytes, expect: int | None) -> None:
        self.ctr, self.status, self.outport, self.out, self.expect = ctr, status, outport, out, expect


class I8042:
    """The controller at 0x60-0x64 (the bus maps 0x60..0x64 as one 5-port range)."""

    def __init__(self, on_reset: Callable[[], None], irq: Callable[[int], None]) -> None:
        self._on_reset = on_reset
        self._irq = irq
        self._lock = threading.Lock()
        self.ctr = 0x45  # keyboard interrupt on, system flag, translation (a BIOS's setting)
        self.status = STATUS_SYS
        self.outport = 0x01  # bit 0: the CPU is not held in reset
        self.out: deque[int] = deque()
        self._expect: int | None = None  # a command waiting for its data byte at 0x60

    def _queue(self, *values: int) -> None:
        self.out.extend(values)
        self.status |= STATUS_OBF

    def send_ctrl_alt_del(self) -> bool:
        """Press and release Ctrl-Alt-Del; False if the guest has disabled the keyboard."""
        with self._lock:
            if self.ctr & CTR_KBD_DISABLED:
                return False
            raise_irq = not self.out and self.ctr & CTR_KBD_INT
            self._queue(*(CTRL_ALT_DEL_SET1 if self.ctr & CTR_XLATE else CTRL_ALT_DEL_SET2))
        if raise_irq:
            self._pulse()
        return True

    def _pulse(self) -> None:
        self._irq(1)  # an edge on IRQ 1 for the new byte
        self._irq(0)

    def read(self, offset: int, size: int) -> bytes:
        if size != 1:
            return b"\xff" * size
        with self._lock:
            if offset == 0:
                value = self.out.popleft() if self.out else 0
                if not self.out:
                    self.status &= ~STATUS_OBF
                more = bool(self.out) and self.ctr & CTR_KBD_INT
                if more:  # the next byte gets its own interrupt (a driver reads one a time)
                    self._irq(1)
                    self._irq(0)
                return bytes([value])
            if offset == 4:
                return bytes([self.status])
        return b"\xff"

    def write(self, offset: int, data: bytes) -> None:
        if len(data) != 1:
            return
        value = data[0]
        reset = False
        with self._lock:
            had_data = bool(self.out)
            if offset == 4:
                self.status |= STATUS_CMD
                reset = self._command(value)
            elif offset == 0:
                self.status &= ~STATUS_CMD
                reset = self._data(value)
            raise_irq = not had_data and self.out and self.ctr & CTR_KBD_INT
        if raise_irq:
            self._pulse()
        if reset:
            self._on_reset()

    def _command(self, cmd: int) -> bool:
        self._expect = None
        if cmd == CMD_READ_CTR:
            self._queue(self.ctr)
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPORT, CMD_WRITE_AUX):
            self._expect = cmd
        elif cmd == CMD_SELF_TEST:
            self._queue(0x55)
        elif cmd in (CMD_TEST_KBD, CMD_TEST_AUX):
            self._queue(0x00)
        elif cmd == CMD_READ_OUTPORT:
            self._queue(self.outport)
        elif cmd == CMD_DISABLE_KBD:
            self.ctr |= 0x10
        elif cmd == CMD_ENABLE_KBD:
            self.ctr &= ~0x10
        elif cmd == CMD_DISABLE_AUX:
            self.ctr |= 0x20
        elif cmd == CMD_ENABLE_AUX:
            self.ctr &= ~0x20
        elif cmd == CMD_PULSE_RESET or (0xF0 <= cmd <= 0xFF and not cmd & 0x01):
            # 0xF0-0xFF pulse output-port lines; bit 0 low pulses reset (0xFE is the usual one).
            return True
        return False

    def _data(self, value: int) -> bool:
        expect, self._expect = self._expect, None
        if expect == CMD_WRITE_CTR:
            self.ctr = value
        elif expect == CMD_WRITE_OUTPORT:
            self.outport = value
            return not value & 0x01  # output port bit 0 low holds the CPU in reset
        elif expect == CMD_WRITE_AUX:
            pass  # no mouse: the byte goes nowhere (the guest times out, as with no mouse)
        elif value == KBD_RESET:
            self._queue(KBD_ACK, KBD_BAT_OK)
        elif value == KBD_IDENTIFY:
            self._queue(KBD_ACK, 0xAB, 0x83)
        else:
            self._queue(KBD_ACK)
        return False

    # -- snapshots ------------------------------------------------------------------------------
    def save(self) -> I8042State:
        with self._lock:
            return I8042State(self.ctr, self.status, self.outport, bytes(self.out), self._expect)

    def restore(self, state: I8042State) -> None:
        with self._lock:
            self.ctr, self.status, self.outport = state.ctr & 0xFF, state.status & 0xFF, state.outport & 0xFF
            self.out = deque(state.out[:64])
            self._expect = state.expect
