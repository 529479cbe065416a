"""virtio-net (virtio 1.2, 5.1) on a TAP: one receive queue, one transmit queue.

Offered features (5.1.3): MAC (the address in config space), STATUS (link up), MRG_RXBUF, plus
VERSION_1 and INDIRECT_DESC. No checksum or segmentation offloads are offered, so every frame
both ways is whole and checksummed (5.1.6.2: without VIRTIO_NET_F_CSUM the driver sets no
NEEDS_CSUM; without GUEST_* offloads the device sends no GSO frames) and the header the guest
writes is not trusted at all: the device sends a zero header to the tap in its place.

Every frame carries a 12-byte ``struct virtio_net_hdr`` (5.1.6: with VERSION_1 the header
always includes ``num_buffers``)::

    u8 flags; u8 gso_type; le16 hdr_len; le16 gso_size; le16 csum_start; le16 csum_offset;
    le16 num_buffers;

Receive (5.1.6.3/5.1.6.4): a frame is read from the tap into a host buffer, then copied into
the driver's device-writable buffers. With MRG_RXBUF a frame may span several chains and
``num_buffers`` says how many; without it one chain must hold the frame and ``num_buffers``
is 1 (5.1.6.4: "the device MUST set num_buffers to 1"). When the driver has posted too little
room, the frame waits and the tap is not read again until the driver adds buffers (the rx
kick), so the device thread never spins.

Transmit (5.1.6.2): a chain's device-readable buffers are the header and the frame; frames
shorter than the header or longer than 64 KiB, or chains with device-writable buffers, fail.
"""
from __future__ import annotations

import logging
import os
import struct

from vnix.vmm.devices.virtio.chain import total, views
from vnix.vmm.devices.virtio.constants import F_INDIRECT_DESC, F_VERSION_1, ID_NET, bit
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.net.persist import NetState
from vnix.vmm.devices.virtio.queue import BadChain, DescriptorChain, Queue
from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # the interfaces below are for the type checker; at run time plain classes

log = logging.getLogger(__name__)

# 5.1.3 Feature bits
F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC, F_MRG_RXBUF, F_STATUS = 0, 1, 3, 5, 15, 16
S_LINK_UP = 1  # 5.1.4 status
RX, TX = 0, 1
QUEUE_SIZE = 256
HDR_SIZE = 12
MAX_FRAME = 65535 + 14  # the largest frame a tap gives without GSO, plus Ethernet header slack
ZERO_HDR = bytes(HDR_SIZE)
_NUM_BUFFERS = struct.Struct("<H")


class Backend(Protocol):
    """What the device needs from the host side (a :class:`~.tap.Tap`; a socket pair in tests):
    one frame, with its 12-byte header, per read or write."""

    fd: int

    def readv(self, buffers: list[bytearray]) -> int | None: ...

    def writev(self, buffers: list[bytes | memoryview]) -> bool: ...

    def close(self) -> None: ...


class NetCounters(Record):
    __slots__ = ("rx_frames", "rx_bytes", "rx_dropped", "tx_frames", "tx_bytes", "tx_dropped")

    def __init__(self) -> None:
        self.rx_frames = self.rx_bytes = 0
        self.rx_dropped = 0  # frames the driver's buffers could not hold
        self.tx_frames = self.tx_bytes = 0
        self.tx_dropped = 0  # frames the tap refused


def random_mac() -> str:
    """52:54:00 (QEMU's locally administered prefix) and three random bytes."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))


class VirtioNet(VirtioDevice):
    device_id = ID_NET
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, backend: Backend, mac: str | None = None, *, tap_name: str = "",
                 bridge: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.mac = mac or random_mac()
        self.tap_name, self.bridge = tap_name, bridge
        self.counters = NetCounters()
        self.rxbuf = bytearray(HDR_SIZE + MAX_FRAME)
        self.pending: int | None = None  # length of a frame in rxbuf not yet given to the guest
        self.held: list[tuple[DescriptorChain, int]] = []  # rx chains taken for ``pending``
        self.rx_paused = False
        self.watch.add(backend.fd, self._backend_readable)

    @classmethod
    def from_config(cls, net: object, index: int) -> VirtioNet:
        """From a :class:`~vnix.vmm.config.NetConfig` (``--net tap[,name=][,bridge=][,mac=]``)."""
        from vnix.vmm.devices.virtio.net.tap import NullTap, Tap

        name, bridge, mac = getattr(net, "name", None), getattr(net, "bridge", None), getattr(net, "mac", None)
        if getattr(net, "kind", "tap") == "none":
            return cls(NullTap(), mac)
        tap = Tap(name, bridge=bridge)
        return cls(tap, mac, tap_name=tap.name, bridge=bridge)

    # -- what the driver negotiates and reads (5.1.3, 5.1.4) --------------------------------
    def device_features(self) -> int:
        return (bit(F_VERSION_1) | bit(F_INDIRECT_DESC) | bit(F_MAC) | bit(F_STATUS)
                | bit(F_MRG_RXBUF))

    def config_bytes(self) -> bytes:
        """struct virtio_net_config: mac[6], le16 status, le16 max_virtqueue_pairs, le16 mtu."""
        return bytes.fromhex(self.mac.replace(":", "")) + struct.pack("<HHH", S_LINK_UP, 1, 1500)

    @property
    def mergeable(self) -> bool:
        return bool(self.acked_features & bit(F_MRG_RXBUF))

    # -- life cycle -------------------------------------------------------------------------
    def on_activate(self) -> None:
        self._resume_rx()

    def on_reset(self) -> None:
        self.pending = None
        self.held = []

    def close(self) -> None:
        self.watch.remove(self.backend.fd)
        self.backend.close()

    # -- receive ----------------------------------------------------------------------------
    def _pause_rx(self) -> None:
        if not self.rx_paused:
            self.rx_paused = True
            self.watch.interest(self.backend.fd, False)

    def _resume_rx(self) -> None:
        if self.rx_paused:
            self.rx_paused = False
            self.watch.interest(self.backend.fd, True)

    def _backend_readable(self) -> None:
        """The tap has frames (device thread)."""
        with self.lock:
            if not self.active or self.broken or not self.queues:
                self._pause_rx()  # nothing to put frames in: stop wake-ups until activation
                return
            self.guarded(self._receive)

    def _receive(self) -> None:
        delivered = 0
        while delivered < QUEUE_SIZE:  # then let the thread breathe; epoll calls again
            if self.pending is None:
                n = self.backend.readv([self.rxbuf])
                if n is None:
                    break
                if n < HDR_SIZE:
                    self.counters.rx_dropped += 1
                    continue
                self.pending = n
            if not self._deliver(self.pending):
                self._pause_rx()  # 5.1.6.3: wait for the driver to add receive buffers
                break
            self.pending = None
            delivered += 1
        if delivered:
            self.signal(RX)

    def _deliver(self, n: int) -> bool:
        """Put the pending frame of ``n`` bytes (header included) into rx chains; False if the
        driver has not posted enough room yet (the chains taken so far are held)."""
        mem, q = self.mem, self.queues[RX]
        assert mem is not None
        room = sum(cap for _, cap in self.held)
        while room < n and (self.mergeable or not self.held):
            try:
                chain = q.pop(mem)
            except BadChain as exc:
                self.fail_chain(q, exc)
                continue
            if chain is None:
                return False
            cap = total(chain.writable)
            if chain.readable or cap < HDR_SIZE:  # 5.1.6.3.1: rx buffers are device-writable
                self.metrics.bad_chains += 1
                self.complete(q, chain.head, 0)
                continue
            self.held.append((chain, cap))
            room += cap
        self.metrics.requests += 1
        if room < n:  # without MRG_RXBUF one chain must hold the frame: drop it (5.1.6.3.1)
            self.counters.rx_dropped += 1
            for chain, _ in self.held:
                self.complete(q, chain.head, 0)
            self.held = []
            return True
        used, left = [], n
        for chain, cap in self.held:
            if left > 0:
                used.append((chain, min(cap, left)))
                left -= cap
        _NUM_BUFFERS.pack_into(self.rxbuf, 10, len(used))
        frame, done = memoryview(self.rxbuf)[:n], 0
        for chain, want in used:
            for v in views(mem, chain.writable, 0, want):
                v[:] = frame[done : done + len(v)]
                done += len(v)
            self.complete(q, chain.head, want)
        for chain, _ in self.held[len(used):]:  # more room than needed: give the rest back empty
            self.complete(q, chain.head, 0)
        self.held = []
        self.counters.rx_frames += 1
        self.counters.rx_bytes += n - HDR_SIZE
        self.metrics.ok += 1
        return True

    # -- the queues -------------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        if index == RX:  # the driver added receive buffers
            self._resume_rx()
            self._receive()
        elif index == TX:
            self._transmit()

    def _transmit(self) -> None:
        self.drain(TX, self._send)

    def _send(self, q: Queue, chain: DescriptorChain) -> None:
        assert self.mem is not None
        n = total(chain.descriptors)
        if chain.writable or not HDR_SIZE <= n <= HDR_SIZE + MAX_FRAME:
            self.metrics.bad_chains += 1
        elif self.backend.writev([ZERO_HDR, *views(self.mem, chain.descriptors, HDR_SIZE)]):
            self.counters.tx_frames += 1
            self.counters.tx_bytes += n - HDR_SIZE
            self.metrics.ok += 1
        else:
            self.counters.tx_dropped += 1
            self.metrics.io_errors += 1
        self.complete(q, chain.head, 0)

    # -- snapshots --------------------------------------------------------------------------
    def save(self) -> NetState:
        frame = bytes(self.rxbuf[: self.pending]) if self.pending is not None else None
        return NetState(self.mac, self.tap_name, self.bridge, frame)

    def load_state(self, state: NetState) -> None:
        self.mac = state.mac
        if state.pending_frame is not None and len(state.pending_frame) <= len(self.rxbuf):
            self.rxbuf[: len(state.pending_frame)] = state.pending_frame
            self.pending = len(state.pending_frame)

    @classmethod
    def restore(cls, state: NetState) -> VirtioNet:
        from vnix.vmm.devices.virtio.net.tap import Tap

        dev = cls(Tap(state.tap, bridge=state.bridge), state.mac, tap_name=state.tap, bridge=state.bridge)
        dev.load_state(state)
        return dev
