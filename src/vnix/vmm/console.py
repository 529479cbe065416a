"""The serial console: UART output to stdout, stdin to UART input.

When stdin is a terminal it is put in raw mode (and always restored, also on errors) and the
escape key Ctrl-A works as in QEMU's ``-serial mon:stdio``:

* ``Ctrl-A x``       quit: the VM stops as after a forced stop (status 0)
* ``Ctrl-A h``       print this help
* ``Ctrl-A Ctrl-A``  send one Ctrl-A to the guest

When stdin is not a terminal (a pipe or a file) bytes pass through untouched and the VM keeps
running after end-of-file. Input is handed to the UART only as fast as its FIFO drains.
"""
from __future__ import annotations

import os
import sys
import termios
import threading
import tty
from typing import Callable

from vnix.vmm.exitcodes import POWEROFF, Stop

CTRL_A = 0x01
HELP = (
    "\r\nC-a h    print this help\r\n"
    "C-a x    exit the VMM\r\n"
    "C-a C-a  send C-a to the guest\r\n"
)


class Console:
    def __init__(
        self,
        on_stop: Callable[[Stop], None],
        stdin_fd: int | None = None,
        stdout_fd: int | None = None,
        on_first_byte: Callable[[], None] | None = None,
    ) -> None:
        self._on_stop = on_stop
        self.stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self.stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
        self._on_first_byte = on_first_byte
        self._saved_tty: list | None = None  # type: ignore[type-arg]
        self._escape = False
        self._sink: Callable[[bytes], int] | None = None
        self._room: threading.Event | None = None
        self.bytes_out = 0
        self.bytes_in = 0
        try:
            self.interactive = os.isatty(self.stdin_fd)
        except OSError:
            self.interactive = False

    # -- output ---------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """UART output. A closed or full stdout never stops the guest: bytes are dropped."""
        if not self.bytes_out and self._on_first_byte is not None:
            self._on_first_byte()
        self.bytes_out += len(data)
        try:
            os.write(self.stdout_fd, data)
        except OSError:
            pass

    # -- input ----------------------------------------------------------------------------------
    def attach(self, sink: Callable[[bytes], int], room: threading.Event) -> None:
        """Where input goes: ``sink(data) -> bytes taken`` and an event set when it has room."""
        self._sink = sink
        self._room = room

    def start(self) -> None:
        if self.interactive:
            try:
                self._saved_tty = termios.tcgetattr(self.stdin_fd)
                tty.setraw(self.stdin_fd)
            except termios.error:
                self._saved_tty = None
        threading.Thread(target=self._reader, name="console-in", daemon=True).start()

    def restore(self) -> None:
        """Give the terminal back as it was (idempotent)."""
        if self._saved_tty is not None:
            try:
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, self._saved_tty)
            except termios.error:
                pass
            self._saved_tty = None

    def _reader(self) -> None:
        while True:
            try:
                data = os.read(self.stdin_fd, 1024)
            except OSError:
                return
            if not data:
                return  # EOF: the guest keeps running without input
            if self.interactive:
                data = self._escapes(data)
            self._feed(data)

    def _escapes(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self._escape:
                self._escape = False
                if byte == CTRL_A:
                    out.append(CTRL_A)
                elif byte in (ord("x"), ord("X")):
                    self._on_stop(Stop(POWEROFF, "stopped from the console (C-a x)"))
                elif byte in (ord("h"), ord("H"), ord("?")):
                    self.write(HELP.encode())
                # any other key after C-a is dropped, as QEMU does
            elif byte == CTRL_A:
                self._escape = True
            else:
                out.append(byte)
        return bytes(out)

    def _feed(self, data: bytes) -> None:
        if self._sink is None or self._room is None:
            return
        while data:
            taken = self._sink(data)
            self.bytes_in += taken
            data = data[taken:]
            if data:
                self._room.wait(0.05)  # the guest reads the FIFO; poll also in case it never does
