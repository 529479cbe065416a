"""virtio-vsock (virtio 1.2, 5.10) with its host side on Unix sockets, as Firecracker does it
(there is no /dev/vhost-vsock on these hosts).

Queues (5.10.2): 0 rx (device -> guest), 1 tx (guest -> device), 2 event (buffers the driver
posts are kept; one is used after a snapshot restore, see 6.). Config (5.10.4):
``le64 guest_cid``. Features: VERSION_1 only (stream sockets; no SEQPACKET).

The host side, numbered as the exchanges happen:

1. The VMM listens on ``uds`` (``--vsock cid=N,uds=PATH``).
2. Host -> guest: a host program connects to ``uds`` and writes ``CONNECT <port>\\n``; the device
   picks a host port H and sends the guest REQUEST(H -> port). On RESPONSE it writes
   ``OK <H>\\n`` to the host program and the stream is open; on RST it closes the host socket.
   A REQUEST the guest leaves unanswered for ``connect_timeout`` seconds (5 by default; a guest
   whose kernel is emulated is slow) ends with ``ERR <reason>\\n`` to the host program, the
   host socket closed and RST to the guest (so a late RESPONSE finds no stream).
3. Guest -> host: the guest sends REQUEST(g -> P) to CID 2; the device connects to the Unix
   socket ``<uds>_<P>``; RESPONSE if that works, RST if not.
4. Data: RW packets both ways, each side within the other's credit (5.10.6.3). The device
   announces its ``fwd_cnt`` in every packet and with CREDIT_UPDATE every 64 KiB forwarded, and
   answers CREDIT_REQUEST.
5. End: host EOF -> SHUTDOWN(RCV|SEND) to the guest, whose RST ends the connection; guest
   SHUTDOWN(SEND) -> the host socket's write side is shut after pending data; SHUTDOWN with both
   flags or RST from the guest -> the host socket is closed (and RST answers a SHUTDOWN).
   A packet for no known connection is answered with RST (5.10.6.6), unless it is an RST.
6. Snapshot restore: open streams are not saved (their host sockets cannot be), so the host
   programs of the old VMM see their sockets closed. Once the restored device is active, it
   writes ``struct virtio_vsock_event { le32 id; }`` with id 0, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
   (5.10.6.7), into the first buffer the driver posted on the event queue and signals it (as
   Firecracker does): the driver resets every connected socket and reads ``guest_cid`` again
   (a clone's is new). Counted in :meth:`counters` as ``transport_resets_sent``; a driver that
   posted no usable event buffer (at least 4 device-writable bytes, no readable part) gets no
   event: ``transport_resets_dropped``, and its unusable chains are returned with length 0.

Everything in a guest header is checked: src_cid must be the guest's CID, dst_cid the host's,
``len`` no larger than the chain, type STREAM; data beyond the credit we gave resets the stream.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import struct
import threading

from vnix.vmm.devices.virtio import DeviceSetupError
from vnix.vmm.devices.virtio.chain import gather, scatter, total
from vnix.vmm.devices.virtio.constants import F_VERSION_1, ID_VSOCK, bit
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.queue import DescriptorChain, Queue
from vnix.vmm.devices.virtio.vsock import packet as p
from vnix.vmm.devices.virtio.vsock.connection import (
    BUF_ALLOC, CLOSING, CONNECTING, HANDSHAKE, OPEN, RX_CHUNK, Connection,
)
from vnix.vmm.devices.virtio.vsock.persist import VsockState

log = logging.getLogger(__name__)

RX, TX, EVENT = 0, 1, 2
MAX_PAYLOAD = 64 * 1024  # a guest RW longer than this is malformed
MAX_CONNECTIONS = 1024
FIRST_HOST_PORT = 1 << 30  # ports the device picks for host-initiated connections
CONNECT_TIMEOUT = 5.0  # seconds the guest has to answer a host CONNECT (Firecracker: 2)
EVENT_TRANSPORT_RESET = 0  # 5.10.6.7: virtio_vsock_event_id
EVENT_LAYOUT = struct.Struct("<I")  # struct virtio_vsock_event { le32 id; }


class VirtioVsock(VirtioDevice):
    device_id = ID_VSOCK
    queue_sizes = (256, 256, 64)

    def __init__(self, cid: int, uds: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        super().__init__()
        self.cid, self.uds, self.connect_timeout = cid, uds, connect_timeout
        self.connect_timeouts = 0
        self.conns: dict[tuple[int, int], Connection] = {}  # (host port, guest port)
        self.handshakes: set[Connection] = set()
        self.rxq: collections.deque[tuple[p.Packet, Connection | None]] = collections.deque()
        self.next_port = FIRST_HOST_PORT
        self.resets_sent = 0
        self.transport_resets_sent = 0  # 6.: events written after a restore
        self.transport_resets_dropped = 0  # 6.: a restore found no usable event buffer
        try:
            if os.path.exists(uds):
                os.unlink(uds)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(uds)
            self.listener.listen(64)
            self.listener.setblocking(False)
        except OSError as exc:
            raise DeviceSetupError(f"vsock: cannot listen on {uds}: {exc.strerror or exc}") from None
        self.watch.add(self.listener.fileno(), self._accept)

    # -- what the driver reads --------------------------------------------------------------
    def device_features(self) -> int:
        return bit(F_VERSION_1)

    def config_bytes(self) -> bytes:
        return struct.pack("<Q", self.cid)

    # -- the host's Unix sockets ---------------------------------------------------------------
    def _accept(self) -> None:
        with self.lock:
            while True:
                try:
                    sock, _ = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    log.warning("vsock: accept on %s: %s", self.uds, exc)
                    return
                if len(self.conns) + len(self.handshakes) >= MAX_CONNECTIONS:
                    sock.close()
                    continue
                sock.setblocking(False)
                conn = Connection(sock, 0, 0, HANDSHAKE)
                self.handshakes.add(conn)
                self.watch.add(conn.fd, lambda c=conn: self._event(c))

    def _event(self, conn: Connection) -> None:
        """A host socket is readable or writable (device thread)."""
        with self.lock:
            if conn.state == HANDSHAKE:
                self._handshake(conn)
            elif conn in self.conns.values():
                if conn.pending:
                    self._flush(conn)
                if conn.wants_read() and self.active:
                    self._read_host(conn)
                self._interest(conn)
            self.guarded(self._deliver)

    def _handshake(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(64 - len(conn.handshake))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.handshake += data
        if b"\n" not in conn.handshake:
            if not data or len(conn.handshake) >= 64:
                self._drop_handshake(conn)
            return
        line = bytes(conn.handshake).split(b"\n", 1)[0].split()
        self.handshakes.discard(conn)
        if len(line) != 2 or line[0] != b"CONNECT" or not line[1].isdigit() or int(line[1]) > 0xFFFFFFFF:
            self._drop_handshake(conn)
            return
        conn.peer_port, conn.local_port = int(line[1]), self._host_port()
        conn.state = CONNECTING
        self.conns[(conn.local_port, conn.peer_port)] = conn
        self._send(conn, p.OP_REQUEST)
        self._interest(conn)
        conn.timer = threading.Timer(self.connect_timeout, self._connect_timed_out, (conn,))
        conn.timer.daemon = True
        conn.timer.start()

    def _connect_timed_out(self, conn: Connection) -> None:
        """2.: the guest never answered the REQUEST (timer thread)."""
        with self.lock:
            if conn.state != CONNECTING or self.conns.get((conn.local_port, conn.peer_port)) is not conn:
                return
            self.connect_timeouts += 1
            log.info("vsock: guest port %d did not answer a host CONNECT in %.1f s", conn.peer_port,
                     self.connect_timeout)
            try:
                conn.sock.send(b"ERR timeout: guest port %d did not answer within %.1f s\n"
                               % (conn.peer_port, self.connect_timeout))
            except OSError:
                pass
            self._reset(conn)
            self.guarded(self._deliver)

    def _drop_handshake(self, conn: Connection) -> None:
        self.handshakes.discard(conn)
        self.watch.remove(conn.fd)
        conn.close()

    def _host_port(self) -> int:
        while True:
            port, self.next_port = self.next_port, self.next_port + 1 if self.next_port < 0xFFFFFFFF else FIRST_HOST_PORT
            if not any(k[0] == port for k in self.conns):
                return port

    def _read_host(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(min(conn.credit, RX_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # host EOF: tell the guest both directions are done, wait for its RST
            conn.host_eof, conn.state = True, CLOSING
            self._send(conn, p.OP_SHUTDOWN, flags=p.SHUTDOWN_RCV | p.SHUTDOWN_SEND)
            return
        conn.tx_cnt += len(data)
        conn.rx_queued = True
        self._send(conn, p.OP_RW, data)

    def _flush(self, conn: Connection) -> None:
        try:
            conn.flush()
        except OSError:  # the host program went away: the guest learns it by RST
            self._reset(conn)
            return
        if conn.shut_write and not conn.pending:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if conn.wants_credit_update():
            self._send(conn, p.OP_CREDIT_UPDATE)

    def _interest(self, conn: Connection) -> None:
        if conn in self.conns.values():
            self.watch.interest(conn.fd, conn.wants_read(), bool(conn.pending))

    # -- packets to the guest (rx) -------------------------------------------------------------
    def _send(self, conn: Connection | None, op: int, data: bytes = b"", *, flags: int = 0,
              to: tuple[int, int] | None = None) -> None:
        """Queue a packet for the guest (buf_alloc and fwd_cnt are filled in at delivery)."""
        src, dst = (conn.local_port, conn.peer_port) if conn is not None else to or (0, 0)
        self.rxq.append((p.Packet(p.HOST_CID, self.cid, src, dst, op, flags=flags, data=data), conn))

    def _deliver(self) -> None:
        if not self.active or self.broken or not self.queues:
            return
        self.drain(RX, self._fill, requests=False, more=lambda: bool(self.rxq))

    def _fill(self, q: Queue, chain: DescriptorChain) -> None:
        """One rx buffer gets the next queued packet (or the part of it that fits)."""
        room = total(chain.writable) - p.HDR_SIZE
        if chain.readable or room < 0:  # 5.10.6.1: rx buffers are device-writable
            self.metrics.bad_chains += 1
            self.complete(q, chain.head, 0)
            return
        pkt, conn = self.rxq[0]
        if len(pkt.data) > room:  # split an RW over several rx buffers
            pkt_now = pkt.replace(data=pkt.data[:room])
            pkt.data = pkt.data[room:]
        else:
            pkt_now = pkt
            self.rxq.popleft()
            if conn is not None and pkt.op == p.OP_RW:
                conn.rx_queued = False
                self._interest(conn)
        if conn is not None:
            pkt_now.buf_alloc, pkt_now.fwd_cnt = BUF_ALLOC, conn.fwd_cnt
            conn.fwd_cnt_sent = conn.fwd_cnt
        assert self.mem is not None
        written = scatter(self.mem, chain.writable, pkt_now.header() + pkt_now.data)
        self.metrics.ok += 1
        self.complete(q, chain.head, written)

    # -- packets from the guest (tx) ---------------------------------------------------------
    def process_queue(self, index: int) -> None:
        if index == TX:
            self._transmit()
        elif index == RX:  # new rx buffers: deliver, and read the sockets that waited for room
            for conn in list(self.conns.values()):
                self._interest(conn)
        self._deliver()  # EVENT buffers are kept for the next transport reset (6.)

    def _transmit(self) -> None:
        self.drain(TX, self._take_packet)

    def _take_packet(self, q: Queue, chain: DescriptorChain) -> None:
        """One packet from the guest."""
        mem = self.mem
        assert mem is not None
        n = total(chain.readable)
        if n < p.HDR_SIZE or chain.writable:
            self.metrics.bad_chains += 1
        else:
            pkt, length = p.Packet.parse(gather(mem, chain.readable, 0, p.HDR_SIZE))
            if length > min(n - p.HDR_SIZE, MAX_PAYLOAD):
                self.metrics.bad_chains += 1
            else:
                pkt.data = gather(mem, chain.readable, p.HDR_SIZE, length) if length else b""
                self._on_packet(pkt)
        self.complete(q, chain.head, 0)

    def _on_packet(self, pkt: p.Packet) -> None:
        if pkt.src_cid != self.cid or pkt.dst_cid != p.HOST_CID:
            self.metrics.bad_chains += 1  # not from this guest, or not for the host: dropped
            return
        key = (pkt.dst_port, pkt.src_port)
        conn = self.conns.get(key)
        if pkt.type != p.TYPE_STREAM or (conn is None and pkt.op not in (p.OP_REQUEST, p.OP_RST)):
            if pkt.op != p.OP_RST:
                self._rst_to(key)
            return
        if pkt.op == p.OP_REQUEST:
            if conn is not None:  # a second REQUEST for an existing stream: reset it
                self._reset(conn)
            else:
                self._connect_out(pkt)
            return
        if conn is None:  # an RST for nothing
            return
        conn.update_credit(pkt.buf_alloc, pkt.fwd_cnt)
        if pkt.op == p.OP_RST:
            self._forget(conn)
        elif pkt.op == p.OP_RESPONSE and conn.state == CONNECTING:
            conn.state = OPEN
            conn.cancel_timer()
            try:
                conn.sock.send(b"OK %d\n" % conn.local_port)
            except OSError:
                self._reset(conn)
                return
        elif pkt.op == p.OP_RW and conn.state in (OPEN, CLOSING) and not conn.shut_write:
            if len(conn.pending) + len(pkt.data) > BUF_ALLOC:  # beyond the credit we gave
                self._reset(conn)
                return
            conn.pending += pkt.data
            self._flush(conn)
        elif pkt.op == p.OP_CREDIT_REQUEST:
            self._send(conn, p.OP_CREDIT_UPDATE)
        elif pkt.op == p.OP_SHUTDOWN:
            if pkt.flags & p.SHUTDOWN_SEND and pkt.flags & p.SHUTDOWN_RCV:
                self._flush(conn)
                self._reset(conn)
                return
            if pkt.flags & p.SHUTDOWN_SEND:
                conn.shut_write = True
                self._flush(conn)
            if pkt.flags & p.SHUTDOWN_RCV:
                conn.host_eof = True  # the guest reads no more: stop reading the host
        elif pkt.op != p.OP_CREDIT_UPDATE:
            self._reset(conn)  # RESPONSE out of turn, RW before OPEN, unknown op
            return
        if conn in self.conns.values():
            self._interest(conn)

    def _connect_out(self, pkt: p.Packet) -> None:
        """3.: the guest connects to host port P: ``<uds>_<P>``."""
        key = (pkt.dst_port, pkt.src_port)
        if len(self.conns) >= MAX_CONNECTIONS:
            self._rst_to(key)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect(f"{self.uds}_{pkt.dst_port}")
        except OSError as exc:
            log.info("vsock: guest port %d -> host port %d refused: %s", pkt.src_port, pkt.dst_port, exc)
            sock.close()
            self._rst_to(key)
            return
        conn = Connection(sock, pkt.dst_port, pkt.src_port, OPEN)
        conn.update_credit(pkt.buf_alloc, pkt.fwd_cnt)
        self.conns[key] = conn
        self.watch.add(conn.fd, lambda c=conn: self._event(c))
        self._send(conn, p.OP_RESPONSE)
        self._interest(conn)

    def _rst_to(self, key: tuple[int, int]) -> None:
        self.resets_sent += 1
        self._send(None, p.OP_RST, to=key)

    def _reset(self, conn: Connection) -> None:
        """End a stream from our side: RST to the guest, close the host socket."""
        self._forget(conn)
        self._rst_to((conn.local_port, conn.peer_port))

    def _forget(self, conn: Connection) -> None:
        self.conns.pop((conn.local_port, conn.peer_port), None)
        self.rxq = collections.deque((k, c) for k, c in self.rxq if c is not conn)
        self.watch.remove(conn.fd)
        conn.cancel_timer()
        conn.close()

    # -- life cycle ---------------------------------------------------------------------------
    def on_reset(self) -> None:
        """2.4 / 5.10.6.8: a reset drops every connection; the listener stays."""
        for conn in list(self.conns.values()) + list(self.handshakes):
            self.watch.remove(conn.fd)
            conn.cancel_timer()
            conn.close()
        self.conns.clear()
        self.handshakes.clear()
        self.rxq.clear()

    def close(self) -> None:
        with self.lock:
            self.on_reset()
            self.watch.remove(self.listener.fileno())
            self.listener.close()
            try:
                os.unlink(self.uds)
            except OSError:
                pass

    def counters(self) -> dict[str, int]:
        with self.lock:
            return {"connections": len(self.conns), "resets_sent": self.resets_sent,
                    "connect_timeouts": self.connect_timeouts,
                    "transport_resets_sent": self.transport_resets_sent,
                    "transport_resets_dropped": self.transport_resets_dropped}

    # -- snapshots ----------------------------------------------------------------------------
    def save(self) -> VsockState:
        """Open streams do not survive a snapshot (their host sockets cannot be saved): the
        restored device tells the guest with a transport reset event (:meth:`after_restore`)."""
        return VsockState(self.cid, self.uds)

    def load_state(self, state: VsockState) -> None:
        self.cid = state.cid
        # Host ports start anywhere in their range after a restore: a packet of a stream from
        # before the snapshot, still in the guest's rings, must not match a new stream's
        # (host port, guest port) pair (the guest drops those streams on the transport reset,
        # but may read its rx ring before its event queue).
        self.next_port = FIRST_HOST_PORT + int.from_bytes(os.urandom(4), "little") % (0xFFFFFFFF - FIRST_HOST_PORT)

    def after_restore(self) -> None:
        """6.: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET in the first usable event buffer, once per
        restore (the CID, a clone's included, is already in place). A driver that had not set
        DRIVER_OK has no streams and reads the CID when it does: nothing to tell it."""
        with self.lock:
            if not self.active:
                return
            sent: list[int] = []
            if not self.broken and len(self.queues) > EVENT and self.queues[EVENT].ready:
                self.guarded(lambda: self.drain(EVENT, lambda q, c: self._put_event(q, c, sent),
                                                requests=False, more=lambda: not sent))
            if sent:
                self.transport_resets_sent += 1
                log.info("vsock: transport reset event sent to the guest (cid %d)", self.cid)
            else:
                self.transport_resets_dropped += 1
                log.warning("vsock: no event buffer posted by the guest: transport reset not sent; "
                            "its streams from before the snapshot will hang")

    def _put_event(self, q: Queue, chain: DescriptorChain, sent: list[int]) -> None:
        """One event buffer: 5.10.6.7 wants it device-writable and large enough for the event."""
        if chain.readable or total(chain.writable) < EVENT_LAYOUT.size:
            self.metrics.bad_chains += 1
            self.complete(q, chain.head, 0)
            return
        assert self.mem is not None
        written = scatter(self.mem, chain.writable, EVENT_LAYOUT.pack(EVENT_TRANSPORT_RESET))
        self.metrics.ok += 1
        self.complete(q, chain.head, written)
        sent.append(written)
