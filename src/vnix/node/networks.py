"""Virtual networks: a Linux bridge per network, a TAP per NIC, MACs, and dnsmasq for DHCP.

* A network ``N`` is a bridge (``vnb-<N>``, netlink through pyroute2) with the gateway address;
  VMs on one network share the bridge, so they reach each other, and a VM on another network
  is on another bridge, with no layer-2 path between them (the agent adds no routes or NAT).
* A NIC is a TAP (``vnt<n>``) enslaved to its network's bridge; QEMU opens it by name.
* MACs: ``52:54:00`` (QEMU's locally administered prefix) plus three random bytes, checked
  against every MAC this node ever handed out (``macs.json``): no collisions.
* DHCP: one dnsmasq per network (Debian's dnsmasq-base), bound to that bridge only
  (``--interface --bind-interfaces``), DNS off (``--port=0``), leases in the network's folder.
  Or static: the NIC carries the address the user gave and dnsmasq is not started.

State (``<data_dir>/networks/``): ``networks.json``, ``macs.json``, ``<name>/dnsmasq.pid``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnix.hypervisor.spec import NicSpec
from vnix.node.errors import BadRequest, Conflict, NetworkError, NetworkInUse, UnknownNetwork
from vnix.node.images import check_name

MAC_PREFIX = "52:54:00"


@dataclass
class NetworkRecord:
    name: str
    cidr: str  # e.g. 198.18.10.0/24
    bridge: str
    gateway: str  # the bridge's address
    dhcp: bool = True


class NetworkStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- persistence ----------------------------------------------------------------------
    def _load(self, file: str) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads((self.root / file).read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _store(self, file: str, data: dict[str, object]) -> None:
        tmp = self.root / (file + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.root / file)

    def list(self) -> list[NetworkRecord]:
        return [NetworkRecord(**v) for v in self._load("networks.json").values()]  # type: ignore[arg-type]

    def get(self, name: str) -> NetworkRecord:
        raw = self._load("networks.json").get(name)
        if raw is None:
            raise UnknownNetwork(f"unknown network {name!r}")
        return NetworkRecord(**raw)  # type: ignore[arg-type]

    # -- networks -------------------------------------------------------------------------
    def create(self, name: str, cidr: str, dhcp: bool = True) -> NetworkRecord:
        check_name(name, "network")
        if len(name) > 11:
            raise BadRequest(f"network name {name!r} is too long (11 characters at most)")
        try:
            net = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as exc:
            raise BadRequest(f"bad network address {cidr!r}: {exc}") from None
        if net.prefixlen > 29:
            raise BadRequest(f"network {cidr} is too small (at most /29)")
        with self._lock:
            nets = self._load("networks.json")
            if name in nets:
                raise Conflict(f"network {name!r} already exists")
            for other in self.list():
                if ipaddress.IPv4Network(other.cidr).overlaps(net):
                    raise Conflict(f"{cidr} overlaps network {other.name!r} ({other.cidr})")
            rec = NetworkRecord(name, str(net), f"vnb-{name}", str(net.network_address + 1), dhcp)
            self._make_bridge(rec, net.prefixlen)
            try:
                if dhcp:
                    self._start_dnsmasq(rec)
            except NetworkError:
                self._del_link(rec.bridge)
                raise
            nets[name] = asdict(rec)
            self._store("networks.json", nets)
            return rec

    def delete(self, name: str, used_by: list[str]) -> None:
        with self._lock:
            rec = self.get(name)
            if used_by:
                raise NetworkInUse(f"network {name!r} is in use by VM(s) {', '.join(used_by)}")
            self._stop_dnsmasq(rec)
            self._del_link(rec.bridge)
            nets = self._load("networks.json")
            nets.pop(name, None)
            self._store("networks.json", nets)

    def _make_bridge(self, rec: NetworkRecord, prefixlen: int) -> None:
        try:
            with IPRoute() as ipr:
                if ipr.link_lookup(ifname=rec.bridge):
                    raise Conflict(f"a host interface {rec.bridge} already exists")
                ipr.link("add", ifname=rec.bridge, kind="bridge")
                idx = ipr.link_lookup(ifname=rec.bridge)[0]
                ipr.addr("add", index=idx, address=rec.gateway, prefixlen=prefixlen)
                ipr.link("set", index=idx, state="up")
        except NetlinkError as exc:
            self._del_link(rec.bridge)
            raise NetworkError(f"cannot create bridge {rec.bridge}: {exc}") from None

    @staticmethod
    def _del_link(ifname: str) -> None:
        try:
            with IPRoute() as ipr:
                for idx in ipr.link_lookup(ifname=ifname):
                    ipr.link("del", index=idx)
        except NetlinkError:
            pass

    def _start_dnsmasq(self, rec: NetworkRecord) -> None:
        d = self.root / rec.name
        d.mkdir(exist_ok=True)
        net = ipaddress.IPv4Network(rec.cidr)
        hosts = list(net.hosts())
        first, last = hosts[min(9, len(hosts) - 2)], hosts[-1]
        argv = ["dnsmasq", "--conf-file=/dev/null", f"--interface={rec.bridge}",
                "--bind-interfaces", "--except-interface=lo", "--port=0",
                f"--dhcp-range={first},{last},{net.netmask},1h",
                f"--dhcp-leasefile={d / 'leases'}", f"--pid-file={d / 'dnsmasq.pid'}"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except FileNotFoundError:
            raise NetworkError("dnsmasq is not installed (apt-get install dnsmasq-base)") from None
        if out.returncode != 0:
            raise NetworkError(f"dnsmasq for {rec.name!r} failed: {out.stderr.strip()}")

    def _stop_dnsmasq(self, rec: NetworkRecord) -> None:
        try:
            pid = int((self.root / rec.name / "dnsmasq.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def leases(self, name: str) -> dict[str, str]:
        """MAC -> IP from dnsmasq's lease file."""
        out = {}
        try:
            for line in (self.root / name / "leases").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    out[parts[1]] = parts[2]
        except OSError:
            pass
        return out

    # -- NICs -----------------------------------------------------------------------------
    def allocate_mac(self) -> str:
        with self._lock:
            macs = self._load("macs.json")
            used = set(macs.get("used", []))  # type: ignore[call-overload]
            while True:
                mac = MAC_PREFIX + "".join(f":{random.randrange(256):02x}" for _ in range(3))
                if mac not in used:
                    break
            macs["used"] = sorted(used | {mac})
            self._store("macs.json", macs)
            return mac

    def _next_tap(self) -> str:
        macs = self._load("macs.json")
        n = int(macs.get("next_tap", 0))  # type: ignore[call-overload]
        macs["next_tap"] = n + 1
        self._store("macs.json", macs)
        return f"vnt{n}"

    def attach(self, network: str, ip: str | None = None) -> NicSpec:
        """A new NIC on ``network``: MAC, a TAP on the bridge (created now)."""
        with self._lock:
            rec = self.get(network)
            if ip is not None:
                try:
                    addr = ipaddress.IPv4Interface(ip if "/" in ip else
                                                   f"{ip}/{rec.cidr.split('/')[1]}")
                except ValueError as exc:
                    raise BadRequest(f"bad address {ip!r}: {exc}") from None
                if addr.ip not in ipaddress.IPv4Network(rec.cidr):
                    raise BadRequest(f"{ip} is not in network {network!r} ({rec.cidr})")
                ip = str(addr)
            tap = self._next_tap()
            try:
                with IPRoute() as ipr:
                    ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
                    idx = ipr.link_lookup(ifname=tap)[0]
                    br = ipr.link_lookup(ifname=rec.bridge)
                    if not br:
                        raise NetworkError(f"bridge {rec.bridge} of {network!r} is gone")
                    ipr.link("set", index=idx, master=br[0], state="up")
            except NetlinkError as exc:
                self._del_link(tap)
                raise NetworkError(f"cannot create TAP {tap}: {exc}") from None
            return NicSpec(network, self.allocate_mac(), tap, rec.bridge, ip)

    def detach(self, nic: NicSpec) -> None:
        if nic.tap:
            self._del_link(nic.tap)
