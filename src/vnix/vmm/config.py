"""A machine's configuration: what the CLI, the hypervisor drivers and the VMM process share.

The same :class:`MachineConfig` is checked once (:meth:`MachineConfig.validate`), sent to a VMM
process as JSON (``python -m vnix.vmm --config FILE``) and turned into a QEMU command line by the
QEMU driver, so every front end refuses the same bad input with the same one-line message.
This module imports nothing heavy: the VMM process loads it at start-up.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

from vnix.vmm import ConfigError

MIN_MEMORY_MIB = 16
# Guest instruction sets (``uname -m`` names): the native VMM runs x86_64; QEMU (TCG) runs both.
ARCHES = ("x86_64", "aarch64")
MAX_VCPUS = 8  # what the MP table / MADT and our APIC ID space are laid out for

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNIT_MIB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mib(text: str | int) -> int:
    """'256M', '4G', '4GiB', '512' (MiB) -> MiB. Raises ConfigError on anything else."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"cannot read memory size {text!r} (try 256M or 4G)")
    mib = int(m.group(1)) * _UNIT_MIB[m.group(2).upper()]
    if mib != int(mib):
        raise ConfigError(f"memory size {text!r} is not a whole number of MiB")
    return int(mib)


def host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


@dataclass
class DiskConfig:
    path: str
    readonly: bool = False
    format: str = "raw"  # raw | qcow2


@dataclass
class NetConfig:
    kind: str = "tap"
    name: str | None = None  # tap device name
    bridge: str | None = None
    mac: str | None = None

    def validate(self) -> None:
        if self.kind != "tap":
            raise ConfigError(f"net kind {self.kind!r} is not supported (only tap)")
        for label, name in (("name", self.name), ("bridge", self.bridge)):
            if name is not None and not _IFNAME_RE.match(name):
                raise ConfigError(f"net {label} {name!r} is not a valid interface name")
        if self.mac is not None and (not _MAC_RE.match(self.mac) or int(self.mac[:2], 16) & 1):
            raise ConfigError(f"net mac {self.mac!r} is not a unicast MAC address")


@dataclass
class VsockConfig:
    """virtio-vsock with Firecracker's Unix-socket host side (``--vsock cid=N,uds=PATH``)."""

    cid: int
    uds: str

    def validate(self) -> None:
        # virtio 1.2, 5.10.4: CIDs 0-2 are reserved (hypervisor, local, host); guest_cid is le64
        # but the upper 32 bits are reserved (0)
        if not 3 <= self.cid <= 0xFFFFFFFE:
            raise ConfigError(f"vsock cid {self.cid} must be between 3 and 4294967294")
        parent = os.path.dirname(os.path.abspath(self.uds))
        if not os.path.isdir(parent):
            raise ConfigError(f"vsock uds {self.uds}: directory {parent} does not exist")
        if len(self.uds.encode()) > 100:  # sun_path is 108 bytes; guest ports add "_<port>"
            raise ConfigError(f"vsock uds {self.uds} is too long for a Unix socket path")


def parse_vsock(text: str) -> VsockConfig:
    """``cid=N,uds=PATH`` (the ``--vsock`` flag)."""
    opts: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or key not in ("cid", "uds"):
            raise ConfigError(f"--vsock {text!r}: expected cid=N,uds=PATH")
        opts[key] = value
    if set(opts) != {"cid", "uds"} or not opts["cid"].isdigit():
        raise ConfigError(f"--vsock {text!r}: expected cid=N,uds=PATH")
    vs = VsockConfig(int(opts["cid"]), opts["uds"])
    vs.validate()
    return vs


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1


def _options(text: str, flag: str) -> tuple[str, dict[str, str]]:
    head, *rest = text.split(",")
    opts: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{flag} {text!r}: expected key=value, not {item!r}")
        opts[key] = value
    return head, opts


def parse_disk(text: str) -> DiskConfig:
    """``PATH[,format=raw|qcow2][,readonly=on|off]`` (the ``--disk`` flag)."""
    path, opts = _options(text, "--disk")
    unknown = set(opts) - {"format", "readonly"}
    if not path or unknown:
        raise ConfigError(f"--disk {text!r}: give a path" + (f", unknown option {sorted(unknown)[0]!r}" if unknown else ""))
    ro = opts.get("readonly", "off")
    if ro not in ("on", "off"):
        raise ConfigError(f"--disk {text!r}: readonly must be on or off")
    return DiskConfig(path, ro == "on", opts.get("format", "raw"))


def parse_net(text: str) -> NetConfig:
    """``tap[,name=TAP][,bridge=BR][,mac=52:54:00:12:34:56]`` (the ``--net`` flag)."""
    kind, opts = _options(text, "--net")
    if kind != "tap":
        raise ConfigError(f"--net {text!r}: only 'tap' networking is supported")
    unknown = set(opts) - {"name", "bridge", "mac"}
    if unknown:
        raise ConfigError(f"--net {text!r}: unknown option {sorted(unknown)[0]!r}")
    net = NetConfig("tap", opts.get("name"), opts.get("bridge"), opts.get("mac"))
    net.validate()
    return net


@dataclass
class MachineConfig:
    kernel: str
    initrd: str | None = None
    cmdline: str = ""
    memory_mib: int = 256
    cpus: int = 1
    disks: list[DiskConfig] = field(default_factory=list)
    nets: list[NetConfig] = field(default_factory=list)
    balloon_mib: int = 0  # the balloon's target at start-up (virtio-balloon is always present)
    vsock: VsockConfig | None = None
    debug_exit: bool = False  # QEMU-compatible isa-debug-exit on port 0x501 (test guests)
    arch: str = "x86_64"  # the guest's instruction set: x86_64 or aarch64 (QEMU TCG only)

    def validate(self) -> None:
        """Refuse impossible configurations with one clear line (ConfigError, exit status 2)."""
        if self.arch not in ARCHES:
            raise ConfigError(f"unknown guest architecture {self.arch!r} ({' or '.join(ARCHES)})")
        if not 1 <= self.cpus <= MAX_VCPUS:
            raise ConfigError(f"--cpus must be between 1 and {MAX_VCPUS}, not {self.cpus}")
        if self.memory_mib < MIN_MEMORY_MIB:
            raise ConfigError(
                f"--memory {self.memory_mib}M is too small (at least {MIN_MEMORY_MIB}M)"
            )
        host = host_memory_mib()
        if self.memory_mib > host:
            raise ConfigError(
                f"--memory {self.memory_mib}M is more than this host has ({host}M)"
            )
        for label, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if path is None:
                continue
            p = path  # os.path, not pathlib: pathlib costs the VMM ~10 ms of start-up imports
            if not os.path.isfile(p):
                raise ConfigError(f"{label} {path} does not exist or is not a file")
            if not os.access(p, os.R_OK):
                raise ConfigError(f"{label} {path} is not readable")
        for disk in self.disks:
            if not os.path.isfile(disk.path):
                raise ConfigError(f"disk {disk.path} does not exist")
            if disk.format not in ("raw", "qcow2"):
                raise ConfigError(f"disk {disk.path}: unknown format {disk.format!r}")
        for net in self.nets:
            net.validate()
        if not isinstance(self.balloon_mib, int) or not 0 <= self.balloon_mib < self.memory_mib:
            raise ConfigError(f"--balloon {self.balloon_mib}M must be below --memory {self.memory_mib}M")
        if self.vsock is not None:
            self.vsock.validate()

    # -- wire format ------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MachineConfig:
        try:
            raw = json.loads(text)
            raw["disks"] = [DiskConfig(**d) for d in raw.get("disks", [])]
            raw["nets"] = [NetConfig(**n) for n in raw.get("nets", [])]
            if raw.get("vsock") is not None:
                raw["vsock"] = VsockConfig(**raw["vsock"])
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"bad machine configuration: {exc}") from None
