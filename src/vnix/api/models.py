"""The manager API's answers (requests are the operations themselves, ``vnix.cluster.ops_*``)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    error: str
    kind: str


class LoginIn(_Strict):
    name: str
    password: str = Field(repr=False)
    ttl_days: int | None = Field(30, ge=1, le=3650, description="token lifetime; null: none")


class LoginOut(BaseModel):
    token: str
    user: str
    role: str


class WhoAmI(BaseModel):
    user: str
    role: str


class TokenIn(_Strict):
    name: str = Field("", max_length=64)
    ttl_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    created: datetime
    expires: datetime | None
    last_used: datetime | None


class NewToken(TokenOut):
    token: str


class VmOut(BaseModel):
    name: str
    owner: str
    host: str | None
    desired: str
    actual: str
    cpus: int
    memory_mib: int
    image: str
    cluster: str | None
    group: str | None
    detail: str
    created: datetime


class HostOut(BaseModel):
    name: str
    url: str
    state: str
    cpus: int
    memory_mib: int
    memory_available_mib: int
    cpu_percent: float
    drivers: list[str]
    vms: int
    used_cpus: int
    used_memory_mib: int
    last_seen: datetime | None
    detail: str


class JoinToken(BaseModel):
    token: str


class ImageOut(BaseModel):
    name: str
    kind: str
    size: int
    hosts: list[str]


class JobOut(BaseModel):
    id: int
    kind: str
    target: str
    owner: str
    state: str
    progress: float
    error: str
    result: dict[str, Any] | None
    created: datetime
    started: datetime | None
    finished: datetime | None


class JobDetail(JobOut):
    op: dict[str, Any]
    log: str


class JobIn(_Strict):
    op: dict[str, Any] = Field(description='an operation: {"kind": "start_vm", "name": ...}')


class Usage(BaseModel):
    vms: int
    cpus: int
    memory_mib: int


class UserOut(BaseModel):
    name: str
    role: str
    max_vms: int | None
    max_cpus: int | None
    max_memory_mib: int | None
    usage: Usage
    created: datetime


class QuotaIn(_Strict):
    max_vms: int | None = Field(None, ge=0)
    max_cpus: int | None = Field(None, ge=0)
    max_memory: str | None = None
    clear: bool = False


class ConsoleOut(BaseModel):
    lines: list[str]


class ConsoleIn(_Strict):
    text: str


class SamplesOut(BaseModel):
    kind: str
    name: str
    metric: str
    points: list[tuple[datetime, float]]


class SnapshotOut(BaseModel):
    """One golden snapshot on one host (a name may be held by several hosts)."""

    host: str
    name: str
    image: str
    memory_mib: int
    cpus: int
    size: int
    created: datetime
    clones: int = Field(description="how many VMs on the host are clones of it")
    used_by: list[str] = Field(description="the clones you may see (all, for admins and "
                               "guests)")
    vsock: bool
    identity: bool = Field(description="its clones are told their name and address over "
                           "vsock")
    boot_s: float
    save_s: float


class SilentHost(BaseModel):
    host: str
    error: str


class SnapshotsOut(BaseModel):
    snapshots: list[SnapshotOut]
    unanswered: list[SilentHost] = Field(description="hosts that are down or whose agent did "
                                         "not answer: their snapshots are not in the list")
