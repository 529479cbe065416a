"""The virtual cluster as typed data: what ``cluster.xsd`` describes, after parsing.

A :class:`ClusterSpec` is what a user asked for (the XML, or its JSON twin on the REST API);
attributes the user left out stay ``None`` so that exporting gives back what was written.
:meth:`ClusterSpec.resolve` fills them in, group over profile over :data:`DEFAULTS`, into the
:class:`NodeConfig` every node of a group gets. Memory is kept in MiB ("1G" and "1024M" are
the same cluster).

Node names are ``<cluster>-<group>-<index>``; the name patterns keep them within the agent's 32
characters (15 + 1 + 12 + 1 + 3).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLUSTER_NAME = r"^[a-z0-9][a-z0-9-]{0,14}$"
SHORT_NAME = r"^[a-z0-9][a-z0-9-]{0,11}$"
OBJECT_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
MAX_NODES_PER_GROUP = 256
MAX_NODES = 1024

Driver = Literal["qemu", "native", "fake"]
Accel = Literal["auto", "kvm", "tcg"]
Policy = Literal["any", "spread", "anti-affinity"]
Source = Literal["image", "snapshot"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Network(_Model):
    name: str = Field(pattern=SHORT_NAME)
    subnet: str = Field(description="IPv4 network in CIDR, e.g. 198.18.64.0/24")
    dhcp: bool = True

    @field_validator("subnet")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"subnet {v!r} is not an IPv4 network in CIDR form: {exc}") from None
        if net.prefixlen > 29:
            raise ValueError(f"subnet {v} is too small (at most /29)")
        return str(net)


class Profile(_Model):
    """A saved VMM configuration: what a group's nodes run with unless the group says."""

    name: str = Field(pattern=OBJECT_NAME)
    cpus: int | None = Field(None, ge=1, le=64)
    memory_mib: int | None = Field(None, ge=16, le=1 << 22)
    driver: Driver | None = None
    accel: Accel | None = None
    vnc: bool | None = None
    cmdline: str | None = Field(None, max_length=4096)


class Placement(_Model):
    policy: Policy = "any"
    hosts: list[str] = Field(default_factory=list, max_length=64,
                             description="only these hosts (empty: any host)")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        import re

        for h in v:
            if not re.match(HOST_NAME, h):
                raise ValueError(f"bad host name {h!r}")
        if len(set(v)) != len(v):
            raise ValueError("a host is listed twice")
        return v


class Group(_Model):
    name: str = Field(pattern=SHORT_NAME)
    count: int = Field(ge=0, le=MAX_NODES_PER_GROUP)
    image: str = Field(pattern=OBJECT_NAME)
    source: Source = "image"
    snapshot: str | None = Field(None, pattern=OBJECT_NAME)
    cpus: int | None = Field(None, ge=1, le=64)
    memory_mib: int | None = Field(None, ge=16, le=1 << 22)
    driver: Driver | None = None
    network: str | None = Field(None, pattern=SHORT_NAME)
    profile: str | None = Field(None, pattern=OBJECT_NAME)
    placement: Placement = Field(default_factory=Placement)


class NodeConfig(_Model):
    """What one node of a group runs with, everything resolved."""

    image: str
    source: Source
    snapshot: str | None
    cpus: int
    memory_mib: int
    driver: Driver | None  # None: the host agent's default driver
    accel: Accel
    vnc: bool
    cmdline: str | None
    network: str | None


DEFAULTS = Profile(name="defaults", cpus=1, memory_mib=256, driver=None, accel="auto",
                   vnc=True, cmdline=None)


class ClusterSpec(_Model):
    name: str = Field(pattern=CLUSTER_NAME)
    description: str | None = Field(None, max_length=4096)
    networks: list[Network] = Field(default_factory=list, max_length=16)
    profiles: list[Profile] = Field(default_factory=list, max_length=64)
    groups: list[Group] = Field(min_length=1, max_length=64)

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    # -- lookups ---------------------------------------------------------------------------
    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def network(self, name: str) -> Network:
        for n in self.networks:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.groups)

    def node_names(self) -> Iterator[tuple[Group, str]]:
        for g in self.groups:
            for i in range(g.count):
                yield g, node_name(self.name, g.name, i)

    # -- resolution ------------------------------------------------------------------------
    def resolve(self, group: Group, saved: Mapping[str, Profile] | None = None) -> NodeConfig:
        """Group attribute, else its profile's (inline first, then ``saved``), else DEFAULTS.
        KeyError names a profile that is neither inline nor saved."""
        prof = Profile(name="none")
        if group.profile:
            inline = {p.name: p for p in self.profiles}
            found = inline.get(group.profile) or (saved or {}).get(group.profile)
            if found is None:
                raise KeyError(group.profile)
            prof = found

        def pick(attr: str) -> object:
            for src in (group, prof, DEFAULTS):
                v = getattr(src, attr, None)
                if v is not None:
                    return v
            return None

        return NodeConfig(
            image=group.image, source=group.source, snapshot=group.snapshot,
            cpus=pick("cpus"), memory_mib=pick("memory_mib"), driver=pick("driver"),
            accel=pick("accel"), vnc=pick("vnc"), cmdline=pick("cmdline"),
            network=group.network,
        )  # type: ignore[arg-type]

    def semantic_problems(self) -> list[tuple[str, str]]:
        """(where, what) for every rule the schema cannot state: references, overlapping
        subnets, snapshot sources, the node total. ``where`` is a path like ``group[2]``."""
        out: list[tuple[str, str]] = []
        nets = [ipaddress.IPv4Network(n.subnet) for n in self.networks]
        for i, a in enumerate(nets):
            for j in range(i):
                if a.overlaps(nets[j]):
                    out.append((f"network[{i + 1}]",
                                f"subnet {a} overlaps network {self.networks[j].name!r} "
                                f"({nets[j]})"))
        seen: set[str] = set()
        for kind, names in (("network", [n.name for n in self.networks]),
                            ("profile", [p.name for p in self.profiles]),
                            ("group", [g.name for g in self.groups])):
            seen.clear()
            for i, n in enumerate(names):
                if n in seen:
                    out.append((f"{kind}[{i + 1}]", f"{kind} {n!r} is defined twice"))
                seen.add(n)
        net_names = {n.name for n in self.networks}
        for i, g in enumerate(self.groups):
            where = f"group[{i + 1}]"
            if g.network and g.network not in net_names:
                out.append((where, f"group {g.name!r}: unknown network {g.network!r} "
                                   f"(declare it with <network name=\"{g.network}\" .../>)"))
            if g.source == "snapshot" and not g.snapshot:
                out.append((where, f"group {g.name!r}: source=\"snapshot\" needs a "
                                   "'snapshot' attribute"))
            if g.source == "image" and g.snapshot:
                out.append((where, f"group {g.name!r}: 'snapshot' is given but source is "
                                   "\"image\""))
        if self.node_count > MAX_NODES:
            out.append(("cluster", f"{self.node_count} nodes in all; at most {MAX_NODES}"))
        return out


def node_name(cluster: str, group: str, index: int) -> str:
    return f"{cluster}-{group}-{index}"
