"""The node agent's errors and the HTTP status each one maps to.

Error tree::

    VnixError
     └── NodeError                   root of the agent's own errors
          ├── BadRequest             malformed or impossible input          400 (UsageError)
          ├── NotFound               unknown image / network / VM           404 (UsageError)
          │    ├── UnknownImage
          │    └── UnknownNetwork
          ├── Conflict               exists already, in use                 409 (UsageError)
          │    ├── ImageInUse
          │    └── NetworkInUse
          ├── InvalidImage           not an image, corrupt, wrong format    400 (UsageError)
          └── NetworkError           netlink / dnsmasq failed               502

Errors from below keep their class; :func:`http_status` maps every VnixError to a status
(the hypervisor's NoSuchVm 404, VmExists/InvalidState 409, Unsupported 501, other driver
failures 502) so that no request ends in a 500.
"""
from __future__ import annotations

from vnix.errors import UsageError, VnixError
from vnix.hypervisor.errors import (
    DriverUnavailable,
    InvalidState,
    NoSuchVm,
    Unsupported,
    VmExists,
)


class NodeError(VnixError):
    """Root of the node agent's errors."""


class BadRequest(NodeError, UsageError):
    exit_code = 2


class NotFound(NodeError, UsageError):
    exit_code = 2


class UnknownImage(NotFound):
    pass


class UnknownNetwork(NotFound):
    pass


class Conflict(NodeError, UsageError):
    exit_code = 2


class ImageInUse(Conflict):
    pass


class NetworkInUse(Conflict):
    pass


class InvalidImage(NodeError, UsageError):
    exit_code = 2


class NetworkError(NodeError):
    pass


def http_status(exc: VnixError) -> int:
    """The HTTP status the agent answers ``exc`` with."""
    if isinstance(exc, (NotFound, NoSuchVm)):
        return 404
    if isinstance(exc, (Conflict, VmExists, InvalidState)):
        return 409
    if isinstance(exc, Unsupported):
        return 501
    if isinstance(exc, DriverUnavailable):
        return 503
    if isinstance(exc, UsageError):
        return 400
    return 502  # the VM process, QEMU or the kernel failed: a bad gateway, not our bug
