"""A guest-driver mock: writes descriptor tables, chains and rings into real GuestMemory.

Shipped with the queue code (as virtio-queue ships its ``MockSplitQueue``) so that tests drive
the real device code through the same memory a guest would use, and so the mock keeps up with
the queue's layout. It can build well-formed requests (:meth:`MockDriver.add_chain`) and, for
fuzzing, write any bytes a hostile driver might (:meth:`write_desc`, :meth:`publish`,
:meth:`set_avail_idx`).

Memory is handed out by a bump allocator inside ``[base, base+size)``.
"""
from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass
from typing import Callable

from vnix.vmm.devices.virtio.constants import (
    DESC_SIZE,
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    USED_ELEM_SIZE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from vnix.vmm.devices.virtio.control import VirtioControl
from vnix.vmm.devices.virtio.device import VirtioDevice
from vnix.vmm.devices.virtio.queue import Queue
from vnix.vmm.memory import GuestMemory

_DESC = struct.Struct("<QIHH")


@dataclass
class Buffer:
    """One buffer of a request as the driver sees it."""

    addr: int
    length: int
    writable: bool


class MockDriver:
    """One queue's driver side."""

    def __init__(self, mem: GuestMemory, size: int, base: int, arena: int) -> None:
        self.mem, self.size = mem, size
        self._next = self._base = base
        self._end = base + arena
        self.desc_table = self.alloc(DESC_SIZE * size, 16)
        self.avail_ring = self.alloc(6 + 2 * size, 2)
        self.used_ring = self.alloc(6 + USED_ELEM_SIZE * size, 4)
        mem.fill(self.desc_table, self._next - self.desc_table)
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0

    # -- memory -----------------------------------------------------------------------------
    def alloc(self, length: int, align: int = 8) -> int:
        addr = (self._next + align - 1) & ~(align - 1)
        if addr + length > self._end:
            raise MemoryError(f"mock driver arena full ({length} bytes wanted)")
        self._next = addr + length
        return addr

    def configure(self, queue: Queue) -> None:
        """What a driver writes through the transport before DRIVER_OK (4.1.5.1.3)."""
        queue.size = self.size
        queue.desc_table, queue.avail_ring, queue.used_ring = self.desc_table, self.avail_ring, self.used_ring
        queue.ready = True

    # -- raw writes (a hostile driver can write anything) -------------------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int, next_: int, table: int | None = None) -> None:
        base = self.desc_table if table is None else table
        self.mem.write(base + DESC_SIZE * index, _DESC.pack(addr, length, flags, next_))

    def publish(self, head: int) -> None:
        """Put ``head`` in the next available slot and advance avail.idx."""
        self.mem.write_u16(self.avail_ring + 4 + 2 * (self.avail_idx % self.size), head)
        self.set_avail_idx(self.avail_idx + 1)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.mem.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write_u16(self.avail_ring, flags)

    # -- well-formed requests -----------------------------------------------------------------
    def buffers(self, spec: list[tuple[bytes | int, bool]]) -> list[Buffer]:
        """Allocate buffers: (bytes to place, False) are device-readable, (length, True) writable."""
        out = []
        for content, writable in spec:
            if isinstance(content, int):
                addr = self.alloc(max(content, 1))
                self.mem.fill(addr, max(content, 1), 0xAA)
                out.append(Buffer(addr, content, writable))
            else:
                addr = self.alloc(max(len(content), 1))
                self.mem.write(addr, content)
                out.append(Buffer(addr, len(content), writable))
        return out

    def add_chain(self, spec: list[tuple[bytes | int, bool]], *, indirect: bool = False,
                  publish: bool = True) -> tuple[int, list[Buffer]]:
        """Write one request's buffers and descriptors; return (head, buffers)."""
        bufs = self.buffers(spec)
        if indirect:
            table = self.alloc(DESC_SIZE * len(bufs), 16)
            for i, b in enumerate(bufs):
                last = i == len(bufs) - 1
                flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if b.writable else 0)
                self.write_desc(i, b.addr, b.length, flags, 0 if last else i + 1, table)
            head = self._take()
            self.write_desc(head, table, DESC_SIZE * len(bufs), VIRTQ_DESC_F_INDIRECT, 0)
        else:
            indices = [self._take() for _ in bufs]
            for i, b in enumerate(bufs):
                last = i == len(bufs) - 1
                flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if b.writable else 0)
                self.write_desc(indices[i], b.addr, b.length, flags, 0 if last else indices[i + 1])
            head = indices[0]
        if publish:
            self.publish(head)
        return head, bufs

    def _take(self) -> int:
        index = self.next_desc
        self.next_desc = (self.next_desc + 1) % self.size
        return index

    # -- results ------------------------------------------------------------------------------
    def used_idx(self) -> int:
        return self.mem.read_u16(self.used_ring + 2)

    def used(self) -> list[tuple[int, int]]:
        """(id, len) elements the device returned since the last call."""
        out = []
        idx = self.used_idx()
        while self.used_seen != idx:
            slot = self.used_ring + 4 + USED_ELEM_SIZE * (self.used_seen % self.size)
            out.append(struct.unpack("<II", self.mem.read(slot, USED_ELEM_SIZE)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def read(self, buf: Buffer) -> bytes:
        return self.mem.read(buf.addr, buf.length)


class RecordingInterrupt:
    """An Interrupt that remembers what was signalled."""

    def __init__(self) -> None:
        self.queues: list[int] = []
        self.configs = 0

    def used(self, queue: int) -> None:
        self.queues.append(queue)

    def config_changed(self) -> None:
        self.configs += 1


def bring_up(device: VirtioDevice, mem: GuestMemory, features: int | None = None, *,
             queue_size: int | None = None, base: int = 0x1000,
             arena: int | None = None) -> tuple[VirtioControl, list[MockDriver], RecordingInterrupt]:
    """Driver initialisation (3.1.1) through a VirtioControl, one MockDriver per queue, each
    with an equal share of ``[base, base+arena)`` (default: the rest of the first region)."""
    irq = RecordingInterrupt()
    ctl = VirtioControl(device, mem, irq)
    ctl.write_status(STATUS_ACKNOWLEDGE)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    want = device.device_features() if features is None else features
    for sel in (0, 1):
        ctl.driver_feature_select = sel
        ctl.write_driver_features_word(want >> (32 * sel))
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    if arena is None:
        arena = mem.regions[0].end - base
    share = arena // max(1, len(ctl.queues)) & ~0xF
    drivers = []
    for i, q in enumerate(ctl.queues):
        drv = MockDriver(mem, min(queue_size or q.max_size, q.max_size), base + i * share, share)
        drv.configure(q)
        drivers.append(drv)
    ctl.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    return ctl, drivers, irq


class ManualWatch:
    """An FdWatch for tests: keeps the handlers a device registers; :meth:`poll` calls those
    whose fds are readable (and wanted), as the device thread would."""

    def __init__(self) -> None:
        self.handlers: dict[int, Callable[[], None]] = {}
        self.paused: set[int] = set()
        self.want_write: set[int] = set()

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self.handlers[fd] = handler
        self.paused.discard(fd)
        self.want_write.discard(fd)

    def remove(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        self.paused.discard(fd)
        self.want_write.discard(fd)

    def interest(self, fd: int, readable: bool, writable: bool = False) -> None:
        if fd in self.handlers:
            (self.paused.discard if readable else self.paused.add)(fd)
            (self.want_write.add if writable else self.want_write.discard)(fd)

    def poll(self, timeout: float = 0.0) -> int:
        """One round: call the handler of every ready, wanted fd; return how many ran."""
        fds = [fd for fd in self.handlers if fd not in self.paused]
        wfds = [fd for fd in self.want_write if fd in self.handlers]
        if not fds and not wfds:
            return 0
        r, w, _ = select.select(fds, wfds, [], timeout)
        ready = list(dict.fromkeys(r + w))
        for fd in ready:
            handler = self.handlers.get(fd)
            if handler is not None:
                handler()
        return len(ready)

    def run_until(self, done: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll until ``done()`` or ``timeout`` seconds pass."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                return False
            self.poll(0.05)
        return True
