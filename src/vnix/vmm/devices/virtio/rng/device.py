"""virtio-rng (virtio 1.2, 5.4): one queue (requestq); the driver posts device-writable buffers
and the device fills them with entropy from the host's getrandom(2). No feature bits, no config.

A chain with device-readable buffers is malformed (5.4.6.1: "The device MUST NOT write to
... " / the driver only gives writable buffers): it is returned with nothing written. A request
is capped at MAX_REQUEST bytes so one huge chain cannot make the device thread allocate much.
"""
from __future__ import annotations

import os

from vnix.vmm.devices.virtio.chain import scatter, total
from vnix.vmm.devices.virtio.constants import F_INDIRECT_DESC, F_VERSION_1, ID_RNG, bit
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.queue import DescriptorChain, Queue
from vnix.vmm.devices.virtio.rng.persist import RngState

QUEUE_SIZE = 64
MAX_REQUEST = 64 * 1024


class VirtioRng(VirtioDevice):
    device_id = ID_RNG
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self) -> None:
        super().__init__()
        self.bytes_given = 0

    def device_features(self) -> int:
        return bit(F_VERSION_1) | bit(F_INDIRECT_DESC)

    def process_queue(self, index: int) -> None:
        self.drain(index, self._request)

    def _request(self, q: Queue, chain: DescriptorChain) -> None:
        if chain.readable:
            self.metrics.bad_chains += 1
            self.complete(q, chain.head, 0)
            return
        assert self.mem is not None
        n = min(total(chain.writable), MAX_REQUEST)
        written = scatter(self.mem, chain.writable, os.urandom(n)) if n else 0
        self.bytes_given += written
        self.metrics.ok += 1
        self.complete(q, chain.head, written)

    def save(self) -> RngState:
        return RngState(self.bytes_given)

    def load_state(self, state: RngState) -> None:
        self.bytes_given = state.bytes_given
