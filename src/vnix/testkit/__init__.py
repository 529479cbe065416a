"""The guest test kit's runner: build the freestanding guests and boot them under vnix or QEMU.

Error tree::

    TestkitError               (a VnixError)
     ├── BuildError            ``make -C guests/testkit`` failed
     └── UnknownGuestError     no such guest (also a UsageError: exit status 2)

QEMU is the reference: a guest passes its own checks under QEMU, and vnix must produce the same
report (see guests/testkit/README.md for the report format).
"""
from __future__ import annotations

from vnix.testkit.errors import BuildError, TestkitError, UnknownGuestError
from vnix.testkit.report import GuestReport, parse_output
from vnix.testkit.runner import (
    GUESTS,
    TESTKIT_DIR,
    GuestRun,
    build,
    guest_path,
    qemu_argv,
    run_guest,
    vnix_argv,
)

__all__ = [
    "BuildError",
    "GUESTS",
    "GuestReport",
    "GuestRun",
    "TESTKIT_DIR",
    "TestkitError",
    "UnknownGuestError",
    "build",
    "guest_path",
    "parse_output",
    "qemu_argv",
    "run_guest",
    "vnix_argv",
]
