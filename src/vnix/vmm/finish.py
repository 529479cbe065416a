"""What a VMM process does once its VM has stopped, before it exits with the stop's status: the
same for ``python -m vnix.vmm`` (:mod:`vnix.vmm.__main__`) and a clone server's child
(:mod:`vnix.vmm.clone`), so a node agent reads both the same way.

In order: the stats get the exit status and reason; the control API and the serial socket stop
being served (their socket files removed); the PCI devices give back their host resources (taps,
vsock streams and socket file); the reason goes to stderr if the stop is one to report
(:class:`vnix.vmm.exitcodes.Stop`); ``stats_json`` (``--stats-json PATH``) is written last, so
a supervisor that sees it finds the sockets gone.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    import _socket

    from vnix.vmm.exitcodes import Stop
    from vnix.vmm.machine import Machine
    from vnix.vmm.stats import Stats

PROG = "vnix-vmm"


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def finish(machine: Machine, stop: Stop, stats: Stats, *, stats_json: str | None = None,
           api_listener: _socket.socket | None = None, api_sock: str | None = None) -> None:
    """After ``machine.run`` returned ``stop``. ``api_listener``/``api_sock``: a control API
    socket bound but not served yet (the VM ended before it was), closed and removed here."""
    stats.finish(stop.status, stop.reason)
    if machine.api is not None:
        machine.api.close()  # type: ignore[attr-defined]
    elif api_listener is not None:  # the VM ended before the API was served
        api_listener.close()
        try:
            os.unlink(api_sock)  # type: ignore[arg-type]
        except OSError:
            pass
    machine.console.close()
    if getattr(machine, "pci", None) is not None:  # devices' host resources: taps, vsock socket file
        machine.pci.close()
    if stop.report:
        say(stop.reason)
    if stats_json:
        try:
            stats.write_json(stats_json)
        except OSError as exc:
            say(f"cannot write --stats-json {stats_json}: {exc.strerror}")
