"""virtio-rng state for snapshots: nothing is in flight between notifications."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RngState:
    bytes_given: int = 0
