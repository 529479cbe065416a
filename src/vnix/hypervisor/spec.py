"""What a driver is told (:class:`VmSpec`) and what it reports (:class:`VmInfo` and friends).

Plain dataclasses: the agent turns its pydantic wire models into these at its boundary, and the
drivers persist a :class:`VmSpec` as JSON in the VM's run directory so that a restarted agent
finds its VMs again.
"""
from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from typing import Literal

from vnix.hypervisor.errors import HypervisorError
from vnix.hypervisor.state import VmState
from vnix.vmm.config import DiskConfig, MachineConfig, NetConfig

Accel = Literal["auto", "kvm", "tcg"]


@dataclass
class NicSpec:
    """One virtual NIC: the network it joins and how it is wired on the host."""

    network: str
    mac: str
    tap: str | None = None  # host TAP device name
    bridge: str | None = None  # host bridge the TAP is enslaved to
    ip: str | None = None  # static address (CIDR) or None for DHCP


@dataclass
class DriverOptions:
    """Options only some drivers read; each driver documents the ones it honours."""

    accel: Accel = "auto"  # qemu: kvm, tcg, or what the host check recommends
    machine: str | None = None  # qemu machine type; None: the guest arch's board (pc, virt)
    vnc: bool = True  # qemu: a VNC server on a unix socket in the run directory
    extra_args: list[str] = field(default_factory=list)  # qemu: appended verbatim


@dataclass
class VmSpec:
    """Everything a driver needs to define a VM."""

    name: str
    config: MachineConfig
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    image: str | None = None  # base image name in the image store
    overlay: str | None = None  # this VM's qcow2 overlay (first disk)
    nics: list[NicSpec] = field(default_factory=list)
    options: DriverOptions = field(default_factory=DriverOptions)

    def to_json(self) -> str:
        raw = asdict(self)
        raw["config"] = self.config.to_dict()  # a plain class (the VMM imports no dataclasses)
        return json.dumps(raw, indent=2)

    @classmethod
    def from_json(cls, text: str) -> VmSpec:
        try:
            raw = json.loads(text)
            cfg = raw.pop("config")
            cfg["disks"] = [DiskConfig(**d) for d in cfg.get("disks", [])]
            cfg["nets"] = [NetConfig(**n) for n in cfg.get("nets", [])]
            raw["config"] = MachineConfig(**cfg)
            raw["nics"] = [NicSpec(**n) for n in raw.get("nics", [])]
            raw["options"] = DriverOptions(**raw.get("options", {}))
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise HypervisorError(f"unreadable VM spec: {exc}") from None


@dataclass
class DiskInfo:
    device: str
    path: str
    format: str
    readonly: bool = False
    virtual_size: int | None = None  # bytes, when the driver knows


@dataclass
class NicInfo:
    network: str
    mac: str
    tap: str | None = None
    ip: str | None = None


@dataclass
class VmInfo:
    name: str
    uuid: str
    driver: str
    state: VmState
    pid: int | None = None
    cpus: int = 1
    cpu_time_s: float = 0.0  # user + system time of the VM's process
    memory_mib: int = 0  # configured RAM
    balloon_mib: int | None = None  # RAM the guest has now (configured minus ballooned)
    rss_mib: float | None = None  # host memory the VM process uses
    disks: list[DiskInfo] = field(default_factory=list)
    nics: list[NicInfo] = field(default_factory=list)
    exit_counters: dict[str, int] | None = None  # VM exits by reason, where the driver counts
    vnc: str | None = None  # "unix:/path" or "127.0.0.1:5901"
    accel: str | None = None
    detail: str = ""  # why it crashed, what it is waiting for


@dataclass
class SnapshotInfo:
    tag: str
    path: str
    created: float  # epoch seconds
    size: int  # bytes


@dataclass
class MigrationTarget:
    """What the target's prepare phase hands to the source (Ganeti's 'info' blob)."""

    vm: str
    address: str  # driver-specific: "tcp:127.0.0.1:4444", "fake:<instance>"
    driver: str


@dataclass
class MigrationStatus:
    status: Literal["none", "setup", "active", "completed", "failed", "cancelled"]
    transferred: int = 0  # bytes
    remaining: int = 0
    total: int = 0
    error: str = ""
