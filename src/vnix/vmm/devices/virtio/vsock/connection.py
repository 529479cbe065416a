"""One vsock stream between a guest port and a host Unix-socket stream (Firecracker's design).

States::

    HANDSHAKE  the host connected to the VM's socket and has not finished "CONNECT <port>\\n"
    CONNECTING the device sent REQUEST to the guest and waits for RESPONSE (or RST)
    OPEN       data flows both ways (RW), within credit
    CLOSING    the device sent SHUTDOWN to the guest after host EOF; waits for its RST

Host -> guest data is read from the socket only while the guest has credit for it and no earlier
chunk of this connection is still waiting for an rx buffer, so the device never buffers more than
one chunk a connection. Guest -> host data the socket cannot take at once is kept (at most our
``buf_alloc``, which the guest's credit guarantees) and flushed when the socket is writable;
``fwd_cnt`` counts what reached the socket.
"""
from __future__ import annotations

import socket
import threading

BUF_ALLOC = 256 * 1024  # our receive buffer per connection, as announced to the guest
CREDIT_UPDATE_EVERY = 64 * 1024  # announce fwd_cnt after this many bytes were forwarded
RX_CHUNK = 64 * 1024  # host bytes read at once (split over rx buffers as needed)

HANDSHAKE, CONNECTING, OPEN, CLOSING = "handshake", "connecting", "open", "closing"


class Connection:
    """One stream (compared and hashed by identity: the device keeps sets of them)."""

    __slots__ = ("sock", "local_port", "peer_port", "state", "handshake", "peer_buf_alloc", "peer_fwd_cnt", "tx_cnt",
                 "fwd_cnt", "fwd_cnt_sent", "pending", "rx_queued", "host_eof", "shut_write", "timer")

    def __init__(self, sock: socket.socket, local_port: int, peer_port: int, state: str) -> None:
        self.sock = sock
        self.local_port = local_port  # the host side's port (the guest sees it as src/dst port at CID 2)
        self.peer_port = peer_port  # the guest's port
        self.state = state
        self.handshake = bytearray()  # "CONNECT <port>\n" so far
        self.peer_buf_alloc = self.peer_fwd_cnt = 0
        self.tx_cnt = 0  # bytes sent to the guest
        self.fwd_cnt = 0  # guest bytes written to the host socket
        self.fwd_cnt_sent = 0  # the fwd_cnt last announced to the guest
        self.pending = bytearray()  # guest bytes the socket has not taken
        self.rx_queued = False  # a chunk of ours waits in the device's rx queue
        self.host_eof = False
        self.shut_write = False  # the guest will send no more (SHUTDOWN SEND): EOF passed on
        self.timer: threading.Timer | None = None  # CONNECTING: the guest's time to answer the REQUEST

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def credit(self) -> int:
        """Bytes the guest can take now (5.10.6.3)."""
        return max(0, self.peer_buf_alloc - (self.tx_cnt - self.peer_fwd_cnt))

    def update_credit(self, buf_alloc: int, fwd_cnt: int) -> None:
        self.peer_buf_alloc, self.peer_fwd_cnt = buf_alloc, fwd_cnt

    def flush(self) -> int:
        """Write what the socket takes of ``pending``; return the bytes written."""
        done = 0
        while self.pending:
            try:
                n = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                break
            del self.pending[:n]
            done += n
        self.fwd_cnt += done
        return done

    def wants_credit_update(self) -> bool:
        return self.fwd_cnt - self.fwd_cnt_sent >= CREDIT_UPDATE_EVERY

    def wants_read(self) -> bool:
        return self.state in (HANDSHAKE, OPEN) and not self.host_eof and not self.rx_queued and (
            self.state == HANDSHAKE or self.credit > 0)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
