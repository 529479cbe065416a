"""The interface every virtio device implements, whatever the transport (virtio 1.2, 2 and 4).

A transport (vnix.vmm.devices.pci.virtio_pci) adapts a :class:`VirtioDevice` to a bus: it owns
status, feature negotiation and queue configuration (control.py), and calls the device at three
moments: :meth:`VirtioDevice.activate` when the driver sets DRIVER_OK, :meth:`VirtioDevice.notify`
(on the device thread) when the driver kicks a queue, and :meth:`VirtioDevice.reset`.

A device never lets a guest-made error escape: a broken ring (QueueError) or an access outside
guest RAM puts it in NEEDS_RESET through ``on_needs_reset``; a malformed chain (BadChain) fails
that request. Both are counted in :class:`DeviceMetrics`.
"""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

from vnix.vmm import GuestMemoryError
from vnix.vmm.devices.virtio import QueueError
from vnix.vmm.devices.virtio.constants import F_VERSION_1, bit
from vnix.vmm.devices.virtio.queue import BadChain, DescriptorChain, Queue
from vnix.vmm.memory import GuestMemory
from vnix.vmm.record import Record

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ClassVar, Protocol
else:
    Protocol = object  # the interfaces below are for the type checker; at run time plain classes

log = logging.getLogger(__name__)


class FdWatch(Protocol):
    """Where a device registers host fds it wants handled on its thread (the transport's
    :class:`~vnix.vmm.devices.virtio.worker.Worker`; :class:`~vnix.vmm.devices.virtio.mock.ManualWatch`
    in tests). ``interest(fd, False)`` stops level-triggered wake-ups (a tap with frames but no
    rx buffers) until ``interest(fd, True)``."""

    def add(self, fd: int, handler: Callable[[], None]) -> None: ...

    def remove(self, fd: int) -> None: ...

    def interest(self, fd: int, readable: bool, writable: bool = False) -> None: ...


class _NoWatch:
    """Until a transport attaches: registrations are kept and handed over on attach."""

    def __init__(self) -> None:
        self.handlers: dict[int, Callable[[], None]] = {}

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self.handlers[fd] = handler

    def remove(self, fd: int) -> None:
        self.handlers.pop(fd, None)

    def interest(self, fd: int, readable: bool, writable: bool = False) -> None:
        pass


class Interrupt(Protocol):
    """How a device tells the driver something (4.1.5.4: used buffer / configuration change)."""

    def used(self, queue: int) -> None: ...

    def config_changed(self) -> None: ...


class DeviceMetrics(Record):
    """Counters of one device (``/stats`` of the control API shows them by name)."""

    __slots__ = ("notifications", "requests", "bad_chains", "queue_errors", "out_of_range", "io_errors", "ok")

    def __init__(self) -> None:
        self.notifications = 0
        self.requests = 0
        self.bad_chains = 0  # malformed chains failed (request returned with length 0 / IOERR)
        self.queue_errors = 0  # rings the driver broke: device set to NEEDS_RESET
        self.out_of_range = 0  # guest addresses outside RAM stopped at the GuestMemory door
        self.io_errors = 0  # host-side failures (disk, tap) reported to the guest
        self.ok = 0  # requests that completed successfully


class VirtioDevice(ABC):
    """One virtio device. Subclasses set ``device_id`` and ``queue_sizes`` and implement
    ``device_features``, ``config_bytes`` and ``process_queue``."""

    device_id: ClassVar[int]
    queue_sizes: ClassVar[tuple[int, ...]]

    def __init__(self) -> None:
        self.lock = threading.RLock()  # the device thread and the vCPU threads (config, reset)
        self.metrics = DeviceMetrics()
        self.mem: GuestMemory | None = None
        self.queues: list[Queue] = []
        self.interrupt: Interrupt | None = None
        self.acked_features = 0
        self.active = False
        self.broken = False
        self.on_needs_reset: Callable[[str], None] = lambda why: None
        self.watch: FdWatch = _NoWatch()

    def attach_watch(self, watch: FdWatch) -> None:
        """The transport gives the device its thread's fd watcher (registrations made before
        are moved over)."""
        old = self.watch
        self.watch = watch
        if isinstance(old, _NoWatch):
            for fd, handler in old.handlers.items():
                watch.add(fd, handler)

    # -- what the driver negotiates and reads -----------------------------------------------
    def device_features(self) -> int:
        """Feature bits offered (VIRTIO_F_VERSION_1 always: no legacy interface)."""
        return bit(F_VERSION_1)

    def config_bytes(self) -> bytes:
        """The device-specific configuration space, little-endian (5.x.4)."""
        return b""

    def read_config(self, offset: int, size: int) -> bytes:
        with self.lock:
            data = self.config_bytes()
        return (data[offset : offset + size] if 0 <= offset else b"").ljust(size, b"\0")

    def write_config(self, offset: int, data: bytes) -> None:
        """Most config fields are read-only for the driver; writes are ignored (logged)."""
        log.debug("%s: ignored config write at %#x", type(self).__name__, offset)

    # -- life cycle -------------------------------------------------------------------------
    def activate(self, mem: GuestMemory, queues: list[Queue], interrupt: Interrupt, features: int) -> None:
        with self.lock:
            self.mem, self.queues, self.interrupt = mem, queues, interrupt
            self.acked_features = features
            self.active, self.broken = True, False
            self.on_activate()

    def on_activate(self) -> None:
        """Hook for devices that start host-side work (net rx, vsock listeners)."""

    def reset(self) -> None:
        """4.1.4.3.1 / 2.4: forget the queues and everything negotiated."""
        with self.lock:
            self.on_reset()
            self.mem, self.queues, self.interrupt = None, [], None
            self.acked_features = 0
            self.active = self.broken = False

    def on_reset(self) -> None:
        """Hook: drop in-flight host-side state."""

    def after_restore(self) -> None:
        """Hook, called once at the end of a snapshot restore (queues kicked, interrupt routes
        in place, vCPUs not yet running): tell the guest what it could not see (vsock: a
        transport reset). Not called on a normal boot."""

    def counters(self) -> dict[str, int]:
        """Device-specific counters for the VMM's stats, beside :class:`DeviceMetrics`."""
        return {}

    def close(self) -> None:
        """Hook: release host resources (tap, sockets) when the VMM shuts down."""

    def host_fds(self) -> list[tuple[int, Callable[[], None]]]:
        """Host file descriptors the device thread should also wait on (tap, sockets)."""
        return []

    # -- the device thread ------------------------------------------------------------------
    def notify(self, index: int) -> None:
        """The driver kicked queue ``index`` (ioeventfd). Never raises for guest mistakes."""
        with self.lock:
            if not self.active or self.broken or not 0 <= index < len(self.queues):
                return
            self.metrics.notifications += 1
            self.guarded(lambda: self.process_queue(index))

    def guarded(self, work: Callable[[], object]) -> None:
        """Run queue work; turn guest-made errors into NEEDS_RESET instead of exceptions."""
        try:
            work()
        except QueueError as exc:
            self.metrics.queue_errors += 1
            self.needs_reset(str(exc))
        except GuestMemoryError as exc:
            self.metrics.out_of_range += 1
            self.needs_reset(str(exc))

    def needs_reset(self, why: str) -> None:
        log.warning("%s: device needs reset: %s", type(self).__name__, why)
        self.broken = True
        self.on_needs_reset(why)

    @abstractmethod
    def process_queue(self, index: int) -> None:
        """Take every available chain of queue ``index`` and complete what can be completed."""

    def drain(self, index: int, handle: Callable[[Queue, DescriptorChain], object], *,
              requests: bool = True, more: Callable[[], bool] | None = None) -> None:
        """Pop every available chain of queue ``index`` (while ``more()`` holds, if given) and
        hand it to ``handle(queue, chain)``, which completes it; ``handle`` returns False for a
        chain it keeps without completing. A malformed chain is failed here (:meth:`fail_chain`).
        Each chain counts as a request unless ``requests`` is False. The queue is signalled once
        at the end if any chain was completed or failed."""
        mem, q = self.mem, self.queues[index]
        assert mem is not None
        done = False
        while more is None or more():
            try:
                chain = q.pop(mem)
            except BadChain as exc:
                self.fail_chain(q, exc)
                done = True
                continue
            if chain is None:
                break
            if requests:
                self.metrics.requests += 1
            if handle(q, chain) is not False:
                done = True
        if done:
            self.signal(index)

    def complete(self, queue: Queue, head: int, length: int) -> None:
        assert self.mem is not None
        queue.add_used(self.mem, head, length)

    def signal(self, index: int) -> None:
        assert self.mem is not None and self.interrupt is not None
        if self.queues[index].needs_interrupt(self.mem):
            self.interrupt.used(index)

    def fail_chain(self, queue: Queue, exc: BadChain) -> None:
        """A malformed chain: give it back with nothing written (the request fails)."""
        log.info("%s: %s", type(self).__name__, exc)
        self.metrics.bad_chains += 1
        self.complete(queue, exc.head, 0)
