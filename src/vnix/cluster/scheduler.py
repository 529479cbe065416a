"""Placement: which host gets a new VM.

A host's capacity is its CPUs x ``cpu_ratio`` and its memory x ``memory_ratio`` (overcommit);
what is used is the sum over the VMs the store places there (every VM that is not deleted,
running or not: a stopped VM may start again). A host fits when it is up, has the image, has
the CPUs and the memory free, and — for an anti-affinity group — holds no VM of that group. A
clone of a golden snapshot also needs a host whose agent runs the native driver and, unless
the host may make the snapshot itself, one that holds the snapshot (the caller asked the agents
which do: ``HostLoad.snapshots``).
Among the hosts that fit, the one with the most free memory wins (spreading the load).

When none fits, :class:`NoCapacity` says why, host by host:
``no host can take 4096 MiB and 1 vCPU: h1 has 1024 MiB free, h2 is down``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from vnix.cluster.errors import NoCapacity


class Overcommit(BaseModel):
    cpu_ratio: float = Field(4.0, gt=0, description="vCPUs per host CPU")
    memory_ratio: float = Field(1.0, gt=0, description="VM memory per MiB of host memory")


@dataclass
class HostLoad:
    """What the scheduler knows of one host (built from the store)."""

    name: str
    up: bool
    cpus: int
    memory_mib: int
    images: set[str] = field(default_factory=set)
    used_cpus: int = 0
    used_memory_mib: int = 0
    groups: set[str] = field(default_factory=set)
    drivers: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)  # golden snapshots it holds (if asked)

    def free_cpus(self, oc: Overcommit) -> float:
        return self.cpus * oc.cpu_ratio - self.used_cpus

    def free_memory_mib(self, oc: Overcommit) -> float:
        return self.memory_mib * oc.memory_ratio - self.used_memory_mib

    def add(self, cpus: int, memory_mib: int, group: str | None) -> None:
        self.used_cpus += cpus
        self.used_memory_mib += memory_mib
        if group:
            self.groups.add(group)


@dataclass(frozen=True)
class Request:
    cpus: int
    memory_mib: int
    image: str | None = None
    group: str | None = None  # anti-affinity: no two VMs of a group on one host
    host: str | None = None  # pinned by the user (still checked)
    snapshot: str | None = None  # a golden snapshot the host must hold
    clone: bool = False  # a clone of a golden snapshot: the host needs the native driver


def why_not(h: HostLoad, req: Request, oc: Overcommit) -> str | None:
    """None if ``h`` can take ``req``, else the reason, phrased for the user."""
    if not h.up:
        return f"{h.name} is down"
    if req.clone and "native" not in h.drivers:
        return f"{h.name} cannot make clones (its agent has no native driver)"
    if req.snapshot and req.snapshot not in h.snapshots:
        return f"{h.name} has no snapshot {req.snapshot!r}"
    if req.image and req.image not in h.images:
        return f"{h.name} has no image {req.image!r}"
    if req.group and req.group in h.groups:
        return f"{h.name} already holds a VM of group {req.group!r}"
    free_mem = h.free_memory_mib(oc)
    if free_mem < req.memory_mib:
        return f"{h.name} has {max(0, int(free_mem))} MiB free"
    free_cpu = h.free_cpus(oc)
    if free_cpu < req.cpus:
        return f"{h.name} has {max(0, int(free_cpu))} vCPUs free"
    return None


def place(req: Request, hosts: Iterable[HostLoad], oc: Overcommit) -> HostLoad:
    """The host for ``req``; its load is updated (so a batch can place VM after VM)."""
    candidates = [h for h in hosts if req.host is None or h.name == req.host]
    what = f"{req.memory_mib} MiB and {req.cpus} vCPU{'s' if req.cpus != 1 else ''}"
    if req.host is not None and not candidates:
        raise NoCapacity(f"there is no host {req.host!r}")
    if not candidates:
        raise NoCapacity(f"no host can take {what}: no hosts are registered")
    fits, reasons = [], []
    for h in sorted(candidates, key=lambda h: h.name):
        reason = why_not(h, req, oc)
        (reasons.append(reason) if reason else fits.append(h))
    if not fits:
        where = f"host {req.host}" if req.host else "no host"
        verb = "cannot" if req.host else "can"
        raise NoCapacity(f"{where} {verb} take {what}: {', '.join(reasons)}")
    best = max(fits, key=lambda h: (h.free_memory_mib(oc), h.free_cpus(oc)))  # first by name on ties
    best.add(req.cpus, req.memory_mib, req.group)
    return best
