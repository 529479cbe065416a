"""vnix: a virtualization platform — a native KVM VMM and the VNIX cluster manager."""
from __future__ import annotations

__version__ = "0.1.0"
