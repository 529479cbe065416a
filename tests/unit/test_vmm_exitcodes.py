"""The VMM's exit statuses never collide with the guest's isa-debug-exit statuses."""
from __future__ import annotations

from vnix.vmm.exitcodes import (
    BAD_CONFIG,
    POWEROFF,
    VMM_FAILURE,
    VMM_STATUSES,
    debug_exit_status,
)


def test_no_vmm_status_equals_a_debug_exit_status() -> None:
    guest_statuses = {debug_exit_status(v) for v in range(256)}
    assert guest_statuses.isdisjoint(VMM_STATUSES)
    assert len(set(VMM_STATUSES)) == len(VMM_STATUSES)  # each ending its own status


def test_debug_exit_all_passed_is_not_a_vmm_failure() -> None:
    assert debug_exit_status(0) == 1 != VMM_FAILURE
    assert POWEROFF == 0 and BAD_CONFIG == 2
