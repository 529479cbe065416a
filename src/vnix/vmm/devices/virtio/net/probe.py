"""The host's side of a network check (tests and benchmarks/net.py): persistent taps and
bridges with an address (pyroute2, as the agent does), an ICMP echo client on a raw socket
(this host has no ``ping`` binary), a UDP echo server and a UDP sink that counts bytes.

Addresses come from 198.18.0.0/15, the range set aside for network testing.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


def make_link(name: str, kind: str, cidr: str | None = None, master: str | None = None) -> None:
    """A persistent tap (``kind='tap'``, multi-queue off, vnet header on) or a bridge, up, with
    ``cidr`` as its address and on bridge ``master`` if given. Replaces a leftover of that name."""
    delete_link(name)
    with IPRoute() as ipr:
        if kind == "tap":
            ipr.link("add", ifname=name, kind="tuntap", mode="tap", vnet_hdr=True)
        else:
            ipr.link("add", ifname=name, kind=kind)
        idx = ipr.link_lookup(ifname=name)[0]
        if cidr:
            addr, prefix = cidr.split("/")
            ipr.addr("add", index=idx, address=addr, prefixlen=int(prefix))
        extra = {"master": ipr.link_lookup(ifname=master)[0]} if master else {}
        ipr.link("set", index=idx, state="up", **extra)


def delete_link(name: str) -> None:
    try:
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)
    except NetlinkError:
        pass


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


@dataclass
class PingResult:
    sent: int = 0
    replies: list[int] = field(default_factory=list)  # sequence numbers answered
    payload_ok: bool = True


def ping(ip: str, count: int, *, timeout: float = 20.0, interval: float = 0.3) -> PingResult:
    """Send ICMP echo requests to ``ip`` until ``count`` are answered or ``timeout`` passes."""
    res = PingResult()
    ident = 0x5600 | (threading.get_ident() & 0xFF)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(interval)
        end = time.monotonic() + timeout
        while len(res.replies) < count and time.monotonic() < end:
            res.sent += 1
            data = bytes(range(48))
            body = struct.pack("!BBHHH", 8, 0, 0, ident, res.sent) + data
            body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
            s.sendto(body, (ip, 0))
            try:
                while True:
                    pkt, (src, _) = s.recvfrom(4096)
                    ihl = (pkt[0] & 15) * 4
                    typ, _, _, rid, seq = struct.unpack_from("!BBHHH", pkt, ihl)
                    if src == ip and typ == 0 and rid == ident:
                        res.replies.append(seq)
                        res.payload_ok &= pkt[ihl + 8 :] == data
                        break
            except socket.timeout:
                pass
    return res


class UdpServer:
    """A UDP socket on (ip, port) served by a thread: ``echo`` sends every datagram back;
    otherwise it only counts (``bytes``, ``datagrams``, first and last arrival times)."""

    def __init__(self, ip: str, port: int, *, echo: bool) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((ip, port))
        self.sock.settimeout(0.2)
        self.echo = echo
        self.bytes = self.datagrams = 0
        self.first: float | None = None
        self.last: float | None = None
        self.peers: set[str] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        buf = bytearray(65536)
        while not self._stop:
            try:
                n, addr = self.sock.recvfrom_into(buf)
            except (socket.timeout, OSError):
                continue
            now = time.monotonic()
            self.first = self.first or now
            self.last = now
            self.bytes += n
            self.datagrams += 1
            self.peers.add(addr[0])
            if self.echo:
                self.sock.sendto(bytes(buf[:n]), addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2.0)
        self.sock.close()


# -- TCP: the host's side of the test-kit guest's TCP services (echo 7, discard 9, source 19) --

def pattern(offset: int, n: int) -> bytes:
    """The test-kit guest's stream pattern: stream byte k is k % 251."""
    cycle = bytes(range(251))
    start = offset % 251
    reps = (start + n) // 251 + 1
    return (cycle * reps)[start : start + n]


def connect_retry(ip: str, port: int, *, timeout: float = 30.0, attempt: float = 3.0) -> socket.socket:
    """A TCP connection to a guest that may not be up yet: retried (a fresh socket each time)
    until ``timeout``. A refusal (the guest's RST) is raised at once."""
    end = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(attempt)
        try:
            s.connect((ip, port))
            s.settimeout(None)
            return s
        except ConnectionRefusedError:
            s.close()
            raise
        except OSError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@dataclass
class TcpEcho:
    sent: int = 0
    echoed: bytes = b""
    equal: bool = False
    eof_after_close: bool = False  # the guest closed its side after ours (its FIN came)
    seconds: float = 0.0


def tcp_echo(ip: str, data: bytes, *, port: int = 7, timeout: float = 30.0) -> TcpEcho:
    """Send ``data`` to the guest's echo service, read it back (concurrently: the guest's
    window is smaller than ``data``), half-close, and wait for the guest's FIN."""
    res = TcpEcho(sent=len(data))
    with connect_retry(ip, port, timeout=timeout) as s:
        s.settimeout(timeout)
        start = time.monotonic()
        got = bytearray()

        def reader() -> None:
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got.extend(chunk)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        s.sendall(data)
        t.join(timeout)
        s.shutdown(socket.SHUT_WR)
        res.eof_after_close = s.recv(1) == b""
        res.seconds = time.monotonic() - start
    res.echoed = bytes(got)
    res.equal = res.echoed == data
    return res


def refused(ip: str, port: int, *, timeout: float = 30.0) -> bool:
    """True when a connection to ``port`` is refused (the guest answers the SYN with a RST)."""
    try:
        connect_retry(ip, port, timeout=timeout).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


class TcpEchoServer:
    """A TCP echo server on (ip, port) for guests that connect out; one thread a connection."""

    def __init__(self, ip: str, port: int = 7) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.peers: list[str] = []
        self.echoed = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, addr = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.peers.append(addr[0])
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
                    self.echoed += len(chunk)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(2.0)
        self.sock.close()
