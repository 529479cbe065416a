"""Gather from a chain's device-readable buffers, scatter into its device-writable ones.

Every descriptor was checked against guest RAM when the chain was popped (queue.py), so the
views here are windows the GuestMemory door has already allowed.
"""
from __future__ import annotations

from vnix.vmm.devices.virtio.queue import Descriptor
from vnix.vmm.memory import GuestMemory


def views(mem: GuestMemory, descs: list[Descriptor], skip: int = 0, length: int | None = None) -> list[memoryview]:
    """Zero-copy views of ``length`` bytes (default: all) of ``descs`` after the first ``skip``."""
    out: list[memoryview] = []
    left = -1 if length is None else length
    for d in descs:
        if left == 0:
            break
        if skip >= d.length:
            skip -= d.length
            continue
        n = d.length - skip
        if left >= 0:
            n = min(n, left)
            left -= n
        if n:
            out.append(mem.view(d.addr + skip, n, d.writable))  # read-only buffers are not VMM writes
        skip = 0
    return out


def total(descs: list[Descriptor]) -> int:
    return sum(d.length for d in descs)


def gather(mem: GuestMemory, descs: list[Descriptor], skip: int = 0, length: int | None = None) -> bytes:
    return b"".join(bytes(v) for v in views(mem, descs, skip, length))


def scatter(mem: GuestMemory, descs: list[Descriptor], data: bytes | memoryview, skip: int = 0) -> int:
    """Write as much of ``data`` as fits; return the number of bytes written."""
    done = 0
    for v in views(mem, descs, skip, len(data)):
        n = len(v)
        v[:] = data[done : done + n]
        done += n
    return done
