"""Exit statuses of the VMM process (``python -m vnix.vmm``).

Each way a VM can end has its own status, so the node agent (or a test) knows what happened
without parsing output. Every status the VMM chooses is **even**, because QEMU's isa-debug-exit
(``--debug-exit``) always gives an odd one: a test guest's verdict can never be mistaken for a
VMM failure (debug-exit value 0, "all passed", is status 1, which used to be the failure code).

======  ===========================================================================================
status  meaning
======  ===========================================================================================
0       the guest powered off (ACPI S5 through the sleep control register, KVM_SYSTEM_EVENT_SHUTDOWN),
        or the user stopped the VM (Ctrl-A x on the console, SIGTERM)
2       bad configuration or bad input: one line on stderr, the VM never started
4       the VMM failed on the host side (a KVM ioctl, an I/O error, a VMM bug); the message names
        the operation
10      the guest rebooted: i8042 reset pulse (0xFE on port 0x64), ACPI reset register (port 0x602),
        KVM_SYSTEM_EVENT_RESET. The VMM does not restart the guest; its supervisor may.
12      triple fault: KVM_EXIT_SHUTDOWN
14      the guest panicked (pvpanic, port 0x505, bit 0; KVM_SYSTEM_EVENT_CRASH)
16      KVM could not emulate a guest instruction (KVM_EXIT_INTERNAL_ERROR); stderr shows the
        suberror and the guest rip
(V<<1)|1  with ``--debug-exit``: the guest wrote V to port 0x501, as QEMU's isa-debug-exit does
        (the shell sees the low 8 bits: V=0 -> 1, V=1 -> 3, ...); always odd
======  ===========================================================================================

Status 1 without ``--debug-exit`` can only come from the Python interpreter itself (a crash
before the VMM's own error handling is in place).
"""
from __future__ import annotations

from vnix.vmm.record import FrozenRecord, _set

POWEROFF = 0
BAD_CONFIG = 2
VMM_FAILURE = 4
REBOOT = 10
TRIPLE_FAULT = 12
GUEST_PANIC = 14
EMULATION_FAILURE = 16

#: every status above; all even, so none equals a debug-exit status
VMM_STATUSES = (POWEROFF, BAD_CONFIG, VMM_FAILURE, REBOOT, TRIPLE_FAULT, GUEST_PANIC, EMULATION_FAILURE)


def debug_exit_status(value: int) -> int:
    """QEMU's isa-debug-exit: ``exit((value << 1) | 1)``; the kernel keeps the low 8 bits."""
    return ((value << 1) | 1) & 0xFF


class Stop(FrozenRecord):
    """Why the VM stops: the process exit status and a short human reason.

    ``report`` is False for endings the guest asked for on purpose and that QEMU does not
    comment on either (poweroff, isa-debug-exit): their reason is not printed on stderr.
    """

    __slots__ = ("status", "reason", "report")
    status: int
    reason: str
    report: bool

    def __init__(self, status: int, reason: str, report: bool = True) -> None:
        _set(self, "status", status)
        _set(self, "reason", reason)
        _set(self, "report", report)
