"""A 16550A UART (the PC's COM1 at 0x3f8, IRQ 4).

Register map (TI/National PC16550D data sheet, table "Register summary"; offset from the base):

======  ==========================  ==========================
offset  read                        write
======  ==========================  ==========================
0       RBR receive buffer          THR transmit holding       (DLAB=0)
0       DLL divisor latch low       DLL                        (DLAB=1)
1       IER interrupt enable        IER                        (DLAB=0)
1       DLM divisor latch high      DLM                        (DLAB=1)
2       IIR interrupt ident         FCR FIFO control
3       LCR line control            LCR (bit 7 = DLAB)
4       MCR modem control           MCR (bit 4 = loopback)
5       LSR line status             (ignored)
6       MSR modem status            (ignored)
7       SCR scratch                 SCR
======  ==========================  ==========================

Transmission is instantaneous (THR and the shift register are always empty again after a write),
as in QEMU's and Firecracker's models. Input comes from :meth:`Serial.receive`, which accepts
only what fits in the receive FIFO (16 bytes, or 1 with the FIFO off); the console retries the
rest when the guest has read (``room`` is set). Interrupts, by the data sheet's priority: receiver
line status > received data available / character timeout > THR empty > modem status. The IRQ
line follows "an interrupt is pending" and is driven through a callback (``Vm.irq_line``) only
when it changes. A lock makes the model safe between vCPU threads and the console thread.
"""
from __future__ import annotations

import threading
from collections import deque

from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable

# IER bits
IER_RDA = 0x01
IER_THRE = 0x02
IER_RLS = 0x04
IER_MSI = 0x08

# IIR values (bits 3-1 identify the source; bit 0 = 1 means none pending; 0xC0 = FIFOs enabled)
IIR_NONE = 0x01
IIR_MSI = 0x00
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_RLS = 0x06
IIR_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0

# FCR bits
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER = (1, 4, 8, 14)  # bits 7-6

# LCR / MCR / LSR / MSR bits
LCR_DLAB = 0x80
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
LSR_DR = 0x01
LSR_OE = 0x02
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

FIFO_SIZE = 16
COM1_PORT = 0x3F8
COM1_IRQ = 4
PORT_COUNT = 8


class SerialState(Record):
    """The registers, the receive FIFO's bytes, the latched THRE interrupt and the IRQ line level."""

    __slots__ = ("ier", "lcr", "mcr", "lsr", "msr", "scr", "dll", "dlm", "fcr", "rx", "thr_pending", "line",
                 "bytes_out")

    def __init__(self, ier: int, lcr: int, mcr: int, lsr: int, msr: int, scr: int, dll: int, dlm: int, fcr: int,
                 rx: bytes, thr_pending: bool, line: int, bytes_out: int = 0) -> None:
        self.ier, self.lcr, self.mcr, self.lsr, self.msr, self.scr = ier, lcr, mcr, lsr, msr, scr
        self.dll, self.dlm, self.fcr, self.rx = dll, dlm, fcr, rx
        self.thr_pending, self.line, self.bytes_out = thr_pending, line, bytes_out


class Serial:
    """The UART model. ``out`` gets each transmitted byte; ``irq`` gets the line level (0/1)."""

    def __init__(self, out: Callable[[bytes], None], irq: Callable[[int], None]) -> None:
        self._out = out
        self._irq = irq
        self._lock = threading.Lock()
        self.room = threading.Event()  # set while the receive FIFO can take a byte
        self.room.set()
        self.ier = 0
        self.lcr = 0x03  # 8N1, what firmware leaves behind
        self.mcr = MCR_OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS  # a terminal is attached (QEMU's default)
        self.scr = 0
        self.dll = 0x0C  # 9600 baud
        self.dlm = 0
        self.fcr = 0
        self.rx: deque[int] = deque()
        self._thr_pending = False  # THRE interrupt latched (cleared by reading IIR or writing THR)
        self._line = 0
        self.bytes_out = 0

    # -- helpers --------------------------------------------------------------------------------
    def _fifo_on(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    def _capacity(self) -> int:
        return FIFO_SIZE if self._fifo_on() else 1

    def _pending(self) -> int:
        """The IIR source code of the highest-priority pending interrupt, or IIR_NONE."""
        if self.ier & IER_RLS and self.lsr & (LSR_OE | LSR_BI):
            return IIR_RLS
        if self.ier & IER_RDA and self.rx:
            if not self._fifo_on() or len(self.rx) >= FCR_TRIGGER[self.fcr >> 6]:
                return IIR_RDA
            return IIR_TIMEOUT  # data below the trigger level: the character timeout fires
        if self.ier & IER_THRE and self._thr_pending:
            return IIR_THRE
        if self.ier & IER_MSI and self.msr & 0x0F:
            return IIR_MSI
        return IIR_NONE

    def _update_irq(self) -> None:
        level = 0 if self._pending() == IIR_NONE else 1
        if level != self._line:
            self._line = level
            self._irq(level)

    def _set_room(self) -> None:
        if len(self.rx) < self._capacity():
            self.room.set()
        else:
            self.room.clear()

    def _loop_msr(self) -> int:
        # Loopback: CTS<-RTS, DSR<-DTR, RI<-OUT1, DCD<-OUT2 (data sheet, MCR bit 4).
        m = self.mcr
        return (
            (MSR_CTS if m & MCR_RTS else 0)
            | (MSR_DSR if m & MCR_DTR else 0)
            | (MSR_RI if m & MCR_OUT1 else 0)
            | (MSR_DCD if m & MCR_OUT2 else 0)
        )

    def _push_rx(self, byte: int) -> bool:
        if len(self.rx) >= self._capacity():
            self.lsr |= LSR_OE
            return False
        self.rx.append(byte)
        self.lsr |= LSR_DR
        return True

    # -- host side ------------------------------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Put console input into the receive FIFO; returns how many bytes fitted."""
        with self._lock:
            if self.mcr & MCR_LOOP:
                return 0  # in loopback the line is disconnected from the outside
            taken = 0
            for byte in data:
                if len(self.rx) >= self._capacity():
                    break
                self.rx.append(byte)
                taken += 1
            if taken:
                self.lsr |= LSR_DR
            self._set_room()
            self._update_irq()
            return taken

    # -- guest side (the bus device interface) --------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        if size != 1:
            return b"\xff" * size  # the UART's registers are byte wide
        with self._lock:
            value = self._read(offset)
            self._update_irq()
            return bytes([value])

    def write(self, offset: int, data: bytes) -> None:
        if len(data) != 1:
            return
        with self._lock:
            out = self._write(offset, data[0])
            self._update_irq()
        if out is not None:
            self._out(bytes([out]))  # outside the lock: stdout may block

    def _read(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            if not self.rx:
                self.lsr &= ~LSR_DR
            self._set_room()
            return value
        if offset == 1:
            return self.dlm if dlab else self.ier
        if offset == 2:
            source = self._pending()
            if source == IIR_THRE:
                self._thr_pending = False  # reading IIR clears a THRE interrupt (data sheet)
            return source | (IIR_FIFO_ENABLED if self._fifo_on() else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            value = self.lsr
            self.lsr &= ~(LSR_OE | LSR_BI)  # error bits clear on read
            return value
        if offset == 6:
            if self.mcr & MCR_LOOP:
                return self._loop_msr() | (self.msr & 0x0F)
            value = self.msr
            self.msr &= 0xF0  # delta bits clear on read
            return value
        if offset == 7:
            return self.scr
        return 0xFF

    def _write(self, offset: int, value: int) -> int | None:
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                self.dll = value
                return None
            self._thr_pending = True  # transmitted at once: THR is empty again
            if self.mcr & MCR_LOOP:
                self._push_rx(value)
                self._set_room()
                return None
            self.bytes_out += 1
            return value
        if offset == 1:
            if dlab:
                self.dlm = value
                return None
            before = self.ier
            self.ier = value & 0x0F
            if self.ier & IER_THRE and not before & IER_THRE:
                self._thr_pending = True  # enabling ETBEI with THR empty raises THRE at once
            return None
        if offset == 2:
            if value & FCR_CLEAR_RX:
                self.rx.clear()
                self.lsr &= ~LSR_DR
            if (value ^ self.fcr) & FCR_ENABLE:
                self.rx.clear()  # changing the FIFO mode resets the FIFOs
                self.lsr &= ~LSR_DR
            self.fcr = value & (FCR_ENABLE | 0xC0)
            self._set_room()
            return None
        if offset == 3:
            self.lcr = value
            return None
        if offset == 4:
            old_loop = self._loop_msr()
            self.mcr = value & 0x1F
            if self.mcr & MCR_LOOP:
                new_loop = self._loop_msr()
                changed = old_loop ^ new_loop
                self.msr |= (
                    (MSR_DCTS if changed & MSR_CTS else 0)
                    | (MSR_DDSR if changed & MSR_DSR else 0)
                    | (MSR_DDCD if changed & MSR_DCD else 0)
                    | (MSR_TERI if old_loop & MSR_RI and not new_loop & MSR_RI else 0)
                )
            self._set_room()
            return None
        if offset == 7:
            self.scr = value
        return None  # LSR and MSR writes are ignored (factory test only)

    # -- snapshots ------------------------------------------------------------------------------
    def save(self) -> SerialState:
        with self._lock:
            return SerialState(self.ier, self.lcr, self.mcr, self.lsr, self.msr, self.scr, self.dll, self.dlm,
                               self.fcr, bytes(self.rx), self._thr_pending, self._line, self.bytes_out)

    def restore(self, state: SerialState) -> None:
        """Load ``state`` into a new UART. The IRQ line's level is taken as saved, not driven:
        the in-kernel irqchip's own state (restored with it) already holds it."""
        with self._lock:
            self.ier, self.lcr, self.mcr = state.ier & 0x0F, state.lcr & 0xFF, state.mcr & 0x1F
            self.lsr, self.msr, self.scr = state.lsr & 0xFF, state.msr & 0xFF, state.scr & 0xFF
            self.dll, self.dlm, self.fcr = state.dll & 0xFF, state.dlm & 0xFF, state.fcr & (FCR_ENABLE | 0xC0)
            self.rx = deque(state.rx[: self._capacity()])
            self._thr_pending, self._line = bool(state.thr_pending), 1 if state.line else 0
            self.bytes_out = state.bytes_out
            self._set_room()
