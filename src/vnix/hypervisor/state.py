"""The VM lifecycle as data: states, the table of allowed transitions and the ``require`` guard.

A driver never changes a VM's state without :func:`transition`, and never acts on a VM without
:func:`require`: both raise :class:`~vnix.hypervisor.errors.InvalidState` naming the current and
the wanted states (the habit of QEMU's QMP library, Firecracker's device-status table).

::

    DEFINED ──start──► RUNNING ◄──resume── PAUSED
       │                 │ ▲ ╲──pause──────►  │
       │      suspend(to │ │ resume-from-disk │ suspend
       │           disk) ▼ │                  ▼
       │             SUSPENDED ◄──────────────┘
       │                 │
       │  prepare-target │  stop / force-stop / process died
       ▼                 ▼
    INCOMING ─finalize─► RUNNING ─migrate─► MIGRATING ─finalize(ok)─► STOPPED
                                               └──finalize(failed)──► RUNNING
    RUNNING/PAUSED ──died──► CRASHED ──start──► RUNNING

``destroy`` removes a VM from any state (stopping its process first); it is not a state.
"""
from __future__ import annotations

import enum

from vnix.hypervisor.errors import InvalidState


class VmState(str, enum.Enum):
    DEFINED = "defined"  # known to the driver, never started
    RUNNING = "running"
    PAUSED = "paused"
    SUSPENDED = "suspended"  # state saved to disk, no process
    STOPPED = "stopped"  # shut off (graceful or forced)
    CRASHED = "crashed"  # the process died without being asked to
    INCOMING = "incoming"  # migration target waiting for the source's stream
    MIGRATING = "migrating"  # migration source sending its state


S = VmState

# (from, to): every legal change of state. Anything else is a bug or a user mistake.
TRANSITIONS: frozenset[tuple[VmState, VmState]] = frozenset(
    {
        (S.DEFINED, S.RUNNING),
        (S.DEFINED, S.INCOMING),
        (S.STOPPED, S.RUNNING),
        (S.STOPPED, S.INCOMING),
        (S.CRASHED, S.RUNNING),
        (S.CRASHED, S.STOPPED),
        (S.RUNNING, S.PAUSED),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.STOPPED),
        (S.PAUSED, S.STOPPED),
        (S.RUNNING, S.CRASHED),
        (S.PAUSED, S.CRASHED),
        (S.RUNNING, S.SUSPENDED),
        (S.PAUSED, S.SUSPENDED),
        (S.SUSPENDED, S.RUNNING),
        (S.SUSPENDED, S.STOPPED),  # the saved state is thrown away
        (S.RUNNING, S.MIGRATING),
        (S.PAUSED, S.MIGRATING),
        (S.MIGRATING, S.RUNNING),  # migration failed or was cancelled: the source runs on
        (S.MIGRATING, S.PAUSED),
        (S.MIGRATING, S.STOPPED),  # migration succeeded: the source is done
        (S.MIGRATING, S.CRASHED),
        (S.INCOMING, S.RUNNING),  # migration target finalized
        (S.INCOMING, S.PAUSED),
        (S.INCOMING, S.STOPPED),  # migration failed on the target
        (S.INCOMING, S.CRASHED),
    }
)

# The states an action may start from (what the agent and the drivers ``require``).
ACTIONS: dict[str, frozenset[VmState]] = {
    "start": frozenset({S.DEFINED, S.STOPPED, S.CRASHED}),
    "stop": frozenset({S.RUNNING, S.PAUSED}),
    "force-stop": frozenset({S.RUNNING, S.PAUSED, S.MIGRATING, S.INCOMING, S.CRASHED}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "suspend": frozenset({S.RUNNING, S.PAUSED}),
    "resume-from-disk": frozenset({S.SUSPENDED}),
    "snapshot": frozenset({S.RUNNING, S.PAUSED}),
    "revert": frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.DEFINED, S.CRASHED}),
    "balloon": frozenset({S.RUNNING, S.PAUSED}),
    "migrate": frozenset({S.RUNNING, S.PAUSED}),
    "finalize-source": frozenset({S.MIGRATING}),
    "finalize-target": frozenset({S.INCOMING}),
    "console": frozenset(set(VmState)),
}

# A process exists for the VM in these states.
LIVE_STATES = frozenset({S.RUNNING, S.PAUSED, S.MIGRATING, S.INCOMING})


def require(name: str, current: VmState, action: str) -> None:
    """Raise InvalidState unless ``action`` may start from ``current``."""
    allowed = ACTIONS[action]
    if current not in allowed:
        raise InvalidState(name, action, current, sorted(allowed, key=list(VmState).index))


def transition(name: str, current: VmState, new: VmState, action: str = "") -> VmState:
    """Check one change of state against :data:`TRANSITIONS` and return the new state."""
    if current == new:
        return new
    if (current, new) not in TRANSITIONS:
        raise InvalidState(name, action or f"go to {new.value}", current, [
            frm for frm, to in TRANSITIONS if to == new
        ])
    return new
