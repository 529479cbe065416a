"""The agent's wire format: pydantic models for every request and answer (FastAPI's schema)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NicRequest(_Strict):
    network: str
    ip: str | None = Field(None, description="static address (CIDR); DHCP when absent")


class CreateVm(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    image: str = Field(description="an image with a kernel (kinds linux or kernel)")
    disk_image: str | None = Field(None, description="a disk image to overlay as an extra disk")
    memory: str = Field("256M", description="256M, 1G, ...")
    cpus: int = 1
    cmdline: str | None = Field(None, description="kernel command line (default: the image's)")
    nics: list[NicRequest] = []
    driver: str | None = Field(None, description="qemu, native or fake (agent's default)")
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    vnc: bool = True
    start: bool = True
    snapshot: str | None = Field(None, description="clone this golden snapshot of 'image' "
                                 "(made first if the node has none of that name; native "
                                 "driver; memory and cpus are the snapshot's)")


class CreateSnapshot(_Strict):
    name: str
    image: str = Field(description="the image a template VM boots (native driver)")
    memory: str = "64M"
    cpus: int = 1
    ready: str | None = Field(None, description="console text the template must print before "
                              "it is saved (default: vnix.node.snapshots.READY_LINES)")
    vsock: bool = Field(True, description="give the template (and so each clone) a vsock")


class SnapshotOut(BaseModel):
    name: str
    image: str
    memory_mib: int
    cpus: int
    ready: str
    vsock: bool
    identity_port: int | None
    disk: str | None
    size: int
    created: float
    boot_s: float
    save_s: float
    used_by: list[str]


class StopVm(_Strict):
    timeout: float = Field(30.0, ge=0, le=600)
    force_after: bool = Field(False, description="pull the plug if the guest does not stop")


class Balloon(_Strict):
    target_mib: int = Field(ge=1)


class SnapshotReq(_Strict):
    tag: str


class DiskOut(BaseModel):
    device: str
    path: str
    format: str
    readonly: bool
    virtual_size: int | None


class NicOut(BaseModel):
    network: str
    mac: str
    tap: str | None
    ip: str | None


class VmOut(BaseModel):
    name: str
    uuid: str
    driver: str
    state: str
    image: str | None
    pid: int | None
    cpus: int
    cpu_time_s: float
    memory_mib: int
    balloon_mib: int | None
    rss_mib: float | None
    disks: list[DiskOut]
    nics: list[NicOut]
    exit_counters: dict[str, int] | None
    vnc: str | None
    accel: str | None
    detail: str
    console_tail: list[str] = Field(description="last console lines (crash reports)")
    net_rx_bytes: int | None = Field(None, description="bytes the guest received on its taps")
    net_tx_bytes: int | None = Field(None, description="bytes the guest sent on its taps")
    disk_read_bytes: int | None = Field(None, description="block I/O read by its process")
    disk_write_bytes: int | None = Field(None, description="block I/O written by its process")


class ConsoleOut(BaseModel):
    lines: list[str]


class ConsoleIn(_Strict):
    text: str


class ImportImage(_Strict):
    name: str
    path: str | None = Field(None, description="a raw or qcow2 disk file on the node")
    format: Literal["raw", "qcow2"] | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    tiny: bool = Field(False, description="import $VNIX_HOME/images/tiny")
    built: str | None = Field(None, description="import $VNIX_HOME/images/<built>, an image "
                              "made by `vnix image build` (tiny, tiny-arm64)")


class ImageOut(BaseModel):
    name: str
    kind: str
    disk: str | None
    disk_format: str | None
    kernel: str | None
    initrd: str | None
    cmdline: str
    size: int
    virtual_size: int
    arch: str = "x86_64"
    used_by: list[str]


class CreateNetwork(_Strict):
    name: str
    cidr: str
    dhcp: bool = True


class NetworkOut(BaseModel):
    name: str
    cidr: str
    bridge: str
    gateway: str
    dhcp: bool
    used_by: list[str]


class HostOut(BaseModel):
    hostname: str
    cpus: int
    cpu_percent: float
    memory_total_mib: int
    memory_available_mib: int
    drivers: list[str]
    default_driver: str
    accel: str
    vms: int
    net_rx_bytes: int = Field(0, description="bytes received on the host's NICs (not lo)")
    net_tx_bytes: int = Field(0, description="bytes sent on the host's NICs (not lo)")


class ErrorOut(BaseModel):
    error: str
    kind: str
