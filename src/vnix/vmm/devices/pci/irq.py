"""MSI routes in KVM's GSI routing table, and one irqfd per route.

KVM_SET_GSI_ROUTING replaces the whole table, so this module keeps every MSI route and hands
the complete list to ``commit`` (the machine adds the PC's legacy IOAPIC/PIC routes). Each
vector gets a GSI above the IOAPIC's pins and an eventfd bound to it with KVM_IRQFD: a device
thread raises the interrupt by writing the eventfd, without an ioctl or the vCPU thread.
"""
from __future__ import annotations

import os
import threading

from vnix.kvm.vm import routing_msi
from vnix.vmm.devices.pci import PciSetupError

TYPE_CHECKING = False  # typing is not imported at run time (the VMM's start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol
else:
    Protocol = object  # the interfaces below are for the type checker; at run time plain classes


FIRST_MSI_GSI = 24  # GSIs 0..23 are the IOAPIC's pins
MAX_GSI = 1024  # KVM reports 4096 routing entries here; a VM needs far fewer


class IrqfdVm(Protocol):
    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None: ...


class MsiRouter:
    def __init__(self, vm: IrqfdVm | None, commit: Callable[[list[Any]], None]) -> None:
        self.vm = vm
        self.commit = commit
        self.routes: dict[int, tuple[int, int]] = {}  # gsi -> (address, data)
        self._next = FIRST_MSI_GSI
        self._lock = threading.Lock()
        self.held = False  # restore: routes are recorded, committed once by release()
        self._pending = False

    def hold(self) -> None:
        self.held = True
        self._pending = True  # release() commits the table (legacy routes too) even if no route changes

    def release(self) -> None:
        """End :meth:`hold`: one KVM_SET_GSI_ROUTING for every route set meanwhile."""
        with self._lock:
            self.held = False
            if not self._pending:
                return
            self._pending = False
            entries = [routing_msi(g, a, d) for g, (a, d) in sorted(self.routes.items())]
        self.commit(entries)

    def allocate(self) -> tuple[int, int]:
        """A new GSI and its eventfd (bound by irqfd when a VM is present)."""
        with self._lock:
            if self._next >= MAX_GSI:
                raise PciSetupError("out of MSI GSIs")
            gsi = self._next
            self._next += 1
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if self.vm is not None:
            self.vm.irqfd(fd, gsi)
        return gsi, fd

    def set_route(self, gsi: int, address: int, data: int) -> None:
        with self._lock:
            if self.routes.get(gsi) == (address, data):
                return
            self.routes[gsi] = (address, data)
            if self.held:
                self._pending = True
                return
            entries = [routing_msi(g, a, d) for g, (a, d) in sorted(self.routes.items())]
            self.commit(entries)
