"""The test kit's errors (tree in the package docstring)."""
from __future__ import annotations

from vnix.errors import UsageError, VnixError


class TestkitError(VnixError):
    """Root of the test kit's errors."""

    __test__ = False  # not a pytest test class


class BuildError(TestkitError):
    """Building the guests failed; the message carries make's last output lines."""


class UnknownGuestError(TestkitError, UsageError):
    """The user named a guest that does not exist."""

    exit_code = 2
