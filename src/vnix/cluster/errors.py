"""The manager's errors and the HTTP status each one maps to.

Error tree::

    VnixError
     └── ClusterError                  root of the manager's errors
          ├── BadRequest               malformed or impossible input        400 (UsageError)
          ├── Unauthorized             no or wrong credentials              401 (UsageError)
          ├── Forbidden                the role does not allow it           403 (UsageError)
          │    └── QuotaExceeded       over the user's VM/vCPU/memory quota 403
          ├── NotFound                 unknown VM / host / user / job       404 (UsageError)
          ├── Conflict                 exists already, wrong state          409 (UsageError)
          │    └── NoCapacity          the scheduler found no host          409
          ├── Cancelled                a job was cancelled while it ran
          └── AgentError               a node agent failed or did not answer 502
               └── AgentUnreachable    connection refused / timed out       502

:func:`http_status` maps every VnixError to a status so that no request ends in a 500.
"""
from __future__ import annotations

from vnix.errors import UsageError, VnixError


class ClusterError(VnixError):
    """Root of the manager's errors."""


class BadRequest(ClusterError, UsageError):
    exit_code = 2


class Unauthorized(ClusterError, UsageError):
    exit_code = 2


class Forbidden(ClusterError, UsageError):
    exit_code = 2


class QuotaExceeded(Forbidden):
    pass


class NotFound(ClusterError, UsageError):
    exit_code = 2


class Conflict(ClusterError, UsageError):
    exit_code = 2


class NoCapacity(Conflict):
    pass


class Cancelled(ClusterError):
    pass


class AgentError(ClusterError):
    """An agent answered with an error: ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, host: str, message: str, status: int = 0) -> None:
        super().__init__(f"host {host}: {message}")
        self.host = host
        self.status = status
        self.message = message


class AgentUnreachable(AgentError):
    pass


def http_status(exc: VnixError) -> int:
    """The HTTP status the manager's API answers ``exc`` with."""
    for cls, status in ((Unauthorized, 401), (Forbidden, 403), (NotFound, 404),
                        (Conflict, 409)):
        if isinstance(exc, cls):
            return status
    if isinstance(exc, AgentError):
        return exc.status if exc.status in (400, 404, 409) else 502
    if isinstance(exc, UsageError):
        return 400
    return 502  # an agent, QEMU or the kernel failed below us: a bad gateway, not our bug
