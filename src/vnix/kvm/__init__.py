"""Python bindings for the Linux KVM API: the only code in vnix that calls ``ioctl`` on a KVM fd.

Handles follow the kernel's fd hierarchy (Documentation/virt/kvm/api.rst, section 3)::

    Kvm   (/dev/kvm: API version, capabilities, supported CPUID, MSR list)
     └── Vm     (memory slots, irqchip, PIT, irq lines, irqfd/ioeventfd, MSI routing, clock)
          └── Vcpu   (KVM_RUN and the mmap'd kvm_run page, registers, MSRs, CPUID, LAPIC, ...)

``Vcpu.run()`` returns one decoded exit from :mod:`vnix.kvm.exits`.

Error tree::

    VnixError
     └── KvmError                a KVM ioctl (or opening /dev/kvm) failed: operation + errno
          └── MissingCapability  KVM lacks a capability the VMM needs (named in the message)
"""
from __future__ import annotations

import os

from vnix.errors import VnixError


class KvmError(VnixError):
    """A KVM operation failed. ``op`` names the ioctl, ``errno`` is the kernel's answer."""

    def __init__(self, op: str, errno: int, detail: str = "") -> None:
        self.op = op
        self.errno = errno
        reason = os.strerror(errno) if errno else "failed"
        super().__init__(f"{op}: {reason}" + (f" (errno {errno})" if errno else "") + (f": {detail}" if detail else ""))


class MissingCapability(KvmError):
    """KVM_CHECK_EXTENSION said no to a capability the VMM relies on."""

    def __init__(self, name: str) -> None:
        super().__init__("KVM_CHECK_EXTENSION", 0, f"this KVM lacks {name}, which vnix needs")
        self.capability = name


from vnix.kvm.system import Kvm  # noqa: E402
from vnix.kvm.vcpu import Vcpu  # noqa: E402
from vnix.kvm.vm import Vm  # noqa: E402

__all__ = ["Kvm", "KvmError", "MissingCapability", "Vcpu", "Vm"]
