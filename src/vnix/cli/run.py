"""`vnix run` (placeholder until its issue's code lands)."""
from __future__ import annotations

from vnix.cli.main import app  # noqa: F401
