"""Exit statuses of the VMM process (``python -m vnix.vmm``).

Each way a VM can end has its own status, so the node agent (or a test) knows what happened
without parsing output:

======  ===========================================================================================
status  meaning
======  ===========================================================================================
0       the guest powered off (ACPI S5 through the sleep control register, KVM_SYSTEM_EVENT_SHUTDOWN),
        or the user stopped the VM (Ctrl-A x on the console, SIGTERM)
1       the VMM failed on the host side (a KVM ioctl, an I/O error); the message names the operation
2       bad configuration or bad input: one line on stderr, the VM never started
10      the guest rebooted: i8042 reset pulse (0xFE on port 0x64), ACPI reset register (port 0x602),
        KVM_SYSTEM_EVENT_RESET. The VMM does not restart the guest; its supervisor may.
11      the guest panicked (pvpanic, port 0x505, bit 0)
12      triple fault: KVM_EXIT_SHUTDOWN
13      KVM could not emulate a guest instruction (KVM_EXIT_INTERNAL_ERROR); stderr shows the
        suberror and the guest rip
(V<<1)|1  with ``--debug-exit``: the guest wrote V to port 0x501, as QEMU's isa-debug-exit does
        (the shell sees the low 8 bits: V=0 -> 1, V=1 -> 3, ...)
======  ===========================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

POWEROFF = 0
VMM_FAILURE = 1
BAD_CONFIG = 2
REBOOT = 10
GUEST_PANIC = 11
TRIPLE_FAULT = 12
EMULATION_FAILURE = 13


def debug_exit_status(value: int) -> int:
    """QEMU's isa-debug-exit: ``exit((value << 1) | 1)``; the kernel keeps the low 8 bits."""
    return ((value << 1) | 1) & 0xFF


@dataclass(frozen=True)
class Stop:
    """Why the VM stops: the process exit status and a short human reason.

    ``report`` is False for endings the guest asked for on purpose and that QEMU does not
    comment on either (poweroff, isa-debug-exit): their reason is not printed on stderr.
    """

    status: int
    reason: str
    report: bool = True
