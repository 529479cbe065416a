"""A machine's configuration: what the CLI, the hypervisor drivers and the VMM process share.

The same :class:`MachineConfig` is checked once (:meth:`MachineConfig.validate`), sent to a VMM
process as JSON (``python -m vnix.vmm --config FILE``) and turned into a QEMU command line by the
QEMU driver, so every front end refuses the same bad input with the same one-line message.
This module imports nothing heavy: the VMM process loads it at start-up.
"""
from __future__ import annotations

import os

from vnix.vmm import ConfigError
from vnix.vmm.record import Record  # plain classes: no dataclasses import at VMM start

MIN_MEMORY_MIB = 16
# Guest instruction sets (``uname -m`` names): the native VMM runs x86_64; QEMU (TCG) runs both.
ARCHES = ("x86_64", "aarch64")
MAX_VCPUS = 8  # what the MP table / MADT and our APIC ID space are laid out for

_UNIT_MIB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_size_mib(text: str | int) -> int:
    """'256M', '4G', '4GiB', '512' (MiB) -> MiB. Raises ConfigError on anything else.

    Read by hand, not with ``re``: the VMM process parses ``--memory`` at start-up, and ``re``
    (with ``enum``, which it imports) costs that start-up ~3 ms.
    """
    if isinstance(text, int):
        return text
    s = str(text).strip()
    i = 0
    while i < len(s) and s[i] in "0123456789":
        i += 1
    rest = s[i:].lstrip().upper()
    unit = rest[:1] if rest[:1] in ("K", "M", "G", "T") else ""
    if not i or rest[len(unit):] not in ("", "B", "IB"):
        raise ConfigError(f"cannot read memory size {text!r} (try 256M or 4G)")
    mib = int(s[:i]) * _UNIT_MIB[unit]
    if mib != int(mib):
        raise ConfigError(f"memory size {text!r} is not a whole number of MiB")
    return int(mib)


def host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


class DiskConfig(Record):
    __slots__ = ("path", "readonly", "format")

    def __init__(self, path: str, readonly: bool = False, format: str = "raw") -> None:  # noqa: A002
        self.path = path
        self.readonly = readonly
        self.format = format  # raw | qcow2


class NetConfig(Record):
    __slots__ = ("kind", "name", "bridge", "mac")

    def __init__(self, kind: str = "tap", name: str | None = None, bridge: str | None = None,
                 mac: str | None = None) -> None:
        self.kind = kind
        self.name = name  # tap device name
        self.bridge = bridge
        self.mac = mac

    def validate(self) -> None:
        if self.kind not in ("tap", "none"):  # none: no backend (internal, see NullTap); --net takes tap only
            raise ConfigError(f"net kind {self.kind!r} is not supported (only tap)")
        for label, name in (("name", self.name), ("bridge", self.bridge)):
            if name is not None and not _is_ifname(name):
                raise ConfigError(f"net {label} {name!r} is not a valid interface name")
        if self.mac is not None and (not _is_mac(self.mac) or int(self.mac[:2], 16) & 1):
            raise ConfigError(f"net mac {self.mac!r} is not a unicast MAC address")


class VsockConfig(Record):
    """virtio-vsock with Firecracker's Unix-socket host side (``--vsock cid=N,uds=PATH``)."""

    __slots__ = ("cid", "uds")

    def __init__(self, cid: int, uds: str) -> None:
        self.cid = cid
        self.uds = uds

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


_HEX = frozenset("0123456789abcdefABCDEF")
_IFNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _is_mac(text: str) -> bool:
    """Six hex pairs separated by colons (52:54:00:12:34:56)."""
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and set(p) <= _HEX for p in parts)


def _is_ifname(text: str) -> bool:
    """1 to 15 (IFNAMSIZ - 1) of letters, digits, ``_``, ``.``, ``-``."""
    return 1 <= len(text) <= 15 and set(text) <= _IFNAME_CHARS


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


class MachineConfig(Record):
    """One VM. ``rng`` and ``balloon`` (both on by default) give the guest a virtio-rng and a
    virtio-balloon; with both off and no disk, NIC or vsock the VM has no virtio device at all,
    and the VMM process does not even import its PCI/virtio code (``--rng off --balloon off``:
    the device set of QEMU ``-M microvm`` without ``-device``)."""

    __slots__ = ("kernel", "initrd", "cmdline", "memory_mib", "cpus", "disks", "nets", "balloon_mib", "vsock",
                 "debug_exit", "arch", "rng", "balloon")

    def __init__(
        self,
        kernel: str,
        initrd: str | None = None,
        cmdline: str = "",
        memory_mib: int = 256,
        cpus: int = 1,
        disks: list[DiskConfig] | None = None,
        nets: list[NetConfig] | None = None,
        balloon_mib: int = 0,
        vsock: VsockConfig | None = None,
        debug_exit: bool = False,
        arch: str = "x86_64",
        rng: bool = True,
        balloon: bool = True,
    ) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.disks: list[DiskConfig] = [] if disks is None else disks
        self.nets: list[NetConfig] = [] if nets is None else nets
        self.balloon_mib = balloon_mib  # the balloon's target at start-up
        self.vsock = vsock
        self.debug_exit = debug_exit  # QEMU-compatible isa-debug-exit on port 0x501 (test guests)
        self.arch = arch  # the guest's instruction set: x86_64 or aarch64 (QEMU TCG only)
        self.rng = rng  # virtio-rng (entropy from the host's getrandom)
        self.balloon = balloon  # virtio-balloon (its target settable from the host)

    def has_virtio(self) -> bool:
        """Whether the VM gets any virtio device (and so a PCI host bridge)."""
        return bool(self.disks or self.nets or self.rng or self.balloon or self.vsock is not None)

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
        if self.balloon_mib and not self.balloon:
            raise ConfigError(f"--balloon {self.balloon_mib}M needs the balloon, which is off")
        if self.vsock is not None:
            self.vsock.validate()

    # -- wire format ------------------------------------------------------------------------
    def to_json(self) -> str:
        import json  # only for --config: json costs the VMM's start-up ~1 ms

        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MachineConfig:
        import json

        try:
            raw = json.loads(text)
            raw["disks"] = [DiskConfig(**d) for d in raw.get("disks", [])]
            raw["nets"] = [NetConfig(**n) for n in raw.get("nets", [])]
            if raw.get("vsock") is not None:
                raw["vsock"] = VsockConfig(**raw["vsock"])
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"bad machine configuration: {exc}") from None
