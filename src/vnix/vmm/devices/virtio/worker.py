"""A device thread: waits (epoll) on queue-notification eventfds and host fds, calls handlers.

KVM signals a queue's eventfd itself when the guest writes the notify address (KVM_IOEVENTFD),
so a queue kick does not return to the vCPU thread; the used-buffer interrupt leaves through an
irqfd (KVM_IRQFD) the same way. Only this thread runs the device's queue code.
"""
from __future__ import annotations

import logging
import os
import select
import threading

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable


log = logging.getLogger(__name__)


def drain(fd: int) -> None:
    """Read an eventfd's counter (non-blocking fds only)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


class Worker:
    """One thread; handlers are called with no lock held by the worker itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._stop_fd, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._running = False
        self._go = threading.Event()  # cleared while paused (a snapshot needs quiet queues)
        self._go.set()
        self._parked = threading.Event()

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def interest(self, fd: int, readable: bool, writable: bool = False) -> None:
        """Which events of a registered fd wake the thread (none: paused, still registered)."""
        if fd in self._handlers:
            try:
                self._epoll.modify(fd, (select.EPOLLIN if readable else 0) | (select.EPOLLOUT if writable else 0))
            except (OSError, ValueError):
                pass

    def start(self) -> None:
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._go.set()
        if self._stop_fd >= 0:
            os.eventfd_write(self._stop_fd, 1)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._thread = None

    def close(self) -> None:
        """Stop the thread and close its epoll and eventfd (a machine torn down in a process
        that goes on: a clone server child's rehearsal)."""
        self.stop()
        self._handlers.clear()
        self._epoll.close()
        if self._stop_fd >= 0:
            os.close(self._stop_fd)
            self._stop_fd = -1

    def pause(self, timeout: float = 5.0) -> None:
        """Hold the thread between two handlers (no device work runs until :meth:`resume`);
        returns once it is held. Notifications that arrive meanwhile wait in their eventfds."""
        self._go.clear()
        os.eventfd_write(self._stop_fd, 1)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._parked.wait(timeout)

    def resume(self) -> None:
        self._go.set()

    def _loop(self) -> None:
        while self._running:
            if not self._go.is_set():
                self._parked.set()
                self._go.wait()
                self._parked.clear()
                continue
            try:
                events = self._epoll.poll(1.0)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._stop_fd:
                    drain(fd)
                    continue
                handler = self._handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler()
                except Exception:  # a host-side bug in one device must not kill the thread
                    log.exception("%s: handler for fd %d failed", self.name, fd)
