"""The serial console: UART output to stdout, stdin to UART input.

When stdin is a terminal it is put in raw mode (and always restored, also on errors) and the
escape key Ctrl-A works as in QEMU's ``-serial mon:stdio``:

* ``Ctrl-A x``       quit: the VM stops as after a forced stop (status 0)
* ``Ctrl-A h``       print this help
* ``Ctrl-A Ctrl-A``  send one Ctrl-A to the guest

When stdin is not a terminal (a pipe or a file) bytes pass through untouched and the VM keeps
running after end-of-file. Input is handed to the UART only as fast as its FIFO drains.

``--serial unix:PATH`` (:meth:`Console.listen`) also serves the port on a Unix stream socket, as
QEMU's ``-chardev socket,server=on`` does: every connected client gets the output from then on
(a client that does not keep up loses bytes, the guest never waits for it) and what any client
sends goes to the UART. Standard output keeps the whole output (the node agent points it at the
VM's ``console.log``), so nothing is lost while no client is connected.
"""
from __future__ import annotations

import os
import sys
import threading

# ``_socket``, not ``socket``: the wrapper module (and the ``selectors``/``enum`` work it does)
# costs the VMM ~2 ms of start-up; the C module is all a Unix stream server needs.
import _socket
from collections.abc import Callable

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
        self._server: _socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._clients: list[_socket.socket] = []
        self._feed_lock = threading.Lock()  # one writer into the UART at a time
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
        for client in list(self._clients):
            try:
                client.send(data, _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL)
            except BlockingIOError:
                pass  # a slow client loses output; the guest never waits for it
            except OSError:
                self._drop(client)

    # -- the serial socket ----------------------------------------------------------------------
    def listen(self, path: str) -> None:
        """Serve the port on the Unix socket ``path`` (a stale socket file is replaced). Clients
        are taken from :meth:`start` on; bound later than that (a clone server's child binds it
        once its vCPU runs), from :meth:`accept_clients` on. Until then they wait in the listen
        backlog."""
        if os.path.exists(path):
            os.unlink(path)
        server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(4)
        self._server = server
        self.socket_path = path

    def accept_clients(self) -> None:
        """Start taking the serial socket's clients (once; nothing without :meth:`listen`)."""
        if self._server is not None and self._acceptor is None:
            self._acceptor = threading.Thread(target=self._accept, name="console-accept", daemon=True)
            self._acceptor.start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                fd, _ = self._server._accept()
            except OSError:
                return
            client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            self._clients.append(client)
            threading.Thread(target=self._client_reader, args=(client,), name="console-sock", daemon=True).start()

    def _client_reader(self, client: _socket.socket) -> None:
        while True:
            try:
                data = client.recv(1024)
            except OSError:
                data = b""
            if not data:
                self._drop(client)
                return
            self._feed(data)

    def _drop(self, client: _socket.socket) -> None:
        if client in self._clients:
            self._clients.remove(client)
        client.close()

    def close(self) -> None:
        """Stop serving the socket (the VMM's exit path)."""
        if self._server is not None:
            self._server.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
            self._server = None
        for client in list(self._clients):
            self._drop(client)

    # -- input ----------------------------------------------------------------------------------
    def attach(self, sink: Callable[[bytes], int], room: threading.Event) -> None:
        """Where input goes: ``sink(data) -> bytes taken`` and an event set when it has room."""
        self._sink = sink
        self._room = room

    def start(self) -> None:
        if self.interactive:
            import termios  # a terminal only (termios and tty cost a VM on a pipe ~1 ms of start-up)
            import tty

            try:
                self._saved_tty = termios.tcgetattr(self.stdin_fd)
                tty.setraw(self.stdin_fd)
            except termios.error:
                self._saved_tty = None
        threading.Thread(target=self._reader, name="console-in", daemon=True).start()
        self.accept_clients()

    def restore(self) -> None:
        """Give the terminal back as it was (idempotent)."""
        if self._saved_tty is not None:
            import termios

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
        with self._feed_lock:
            while data:
                taken = self._sink(data)
                self.bytes_in += taken
                data = data[taken:]
                if data:
                    self._room.wait(0.05)  # the guest reads the FIFO; poll also in case it never does
