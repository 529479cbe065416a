"""VXLAN overlays: one virtual network stretched over several hosts.

A network on one host is a bridge (:mod:`vnix.node.networks`). To join the same network on
several hosts, each host adds a VXLAN port to its bridge (RFC 7348; Linux ``vxlan`` link,
``Documentation/networking/vxlan.rst``):

* the port is ``vnx<vni>``, ``local`` is this host's underlay address, UDP port 4789, MAC
  learning on;
* no multicast: unknown-destination and broadcast frames (ARP, DHCP) go to every peer by
  head-end replication, one all-zero FDB entry per peer
  (``bridge fdb append 00:00:00:00:00:00 dev vnx<vni> dst <peer>``);
* the manager gives each stretched network a VNI and sends every host the same peer list;
  :meth:`OverlayStore.set` is idempotent and brings the FDB to exactly that list, so adding
  a host to a cluster is one more call per host.

The VXLAN header costs 50 bytes: the port's MTU is the underlay's minus 50 (1450 on a 1500
underlay), and the bridge takes the smallest MTU of its ports. Guests that keep a 1500 MTU
can still talk (ping, TCP with MSS clamping off aside) as long as frames stay under 1450.

State: ``<data_dir>/networks/overlays.json`` (network -> VNI, local, peers); the kernel keeps
the links while the host runs, so an agent restart changes nothing.

HTTP (mounted under the agent's authenticated router)::

    GET    /overlays                    every overlay on this host
    PUT    /networks/{name}/overlay     {"vni": 4100, "local": "198.18.0.11", "peers": [...]}
    DELETE /networks/{name}/overlay
"""
from __future__ import annotations

import ipaddress
import json
import os
import threading
from dataclasses import asdict, dataclass, field

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnix.node.errors import BadRequest, Conflict, NetworkError, NotFound
from vnix.node.networks import NetworkStore

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
ZERO_MAC = "00:00:00:00:00:00"
MAX_PEERS = 256


class UnknownOverlay(NotFound):
    pass


@dataclass
class OverlayRecord:
    network: str
    vni: int
    local: str
    peers: list[str] = field(default_factory=list)
    device: str = ""
    port: int = VXLAN_PORT


class SetOverlay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vni: int = Field(ge=1, le=(1 << 24) - 1)
    local: str = Field(description="this host's underlay IPv4 address")
    peers: list[str] = Field(default_factory=list, max_length=MAX_PEERS,
                             description="the other hosts' underlay addresses")
    port: int = Field(VXLAN_PORT, ge=1, le=65535)


class OverlayOut(BaseModel):
    network: str
    vni: int
    local: str
    peers: list[str]
    device: str
    port: int
    mtu: int | None


def device_name(vni: int) -> str:
    return f"vnx{vni}"


class OverlayStore:
    def __init__(self, networks: NetworkStore) -> None:
        self.networks = networks
        self.file = networks.root / "overlays.json"
        self._lock = threading.RLock()

    # -- persistence ----------------------------------------------------------------------
    def _load(self) -> dict[str, OverlayRecord]:
        try:
            raw = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: OverlayRecord(**v) for k, v in raw.items()}

    def _save(self, recs: dict[str, OverlayRecord]) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in recs.items()}, indent=2))
        os.replace(tmp, self.file)

    def list(self) -> list[OverlayRecord]:
        return sorted(self._load().values(), key=lambda r: r.network)

    def get(self, network: str) -> OverlayRecord:
        rec = self._load().get(network)
        if rec is None:
            raise UnknownOverlay(f"network {network!r} has no overlay")
        return rec

    # -- changes --------------------------------------------------------------------------
    def set(self, network: str, req: SetOverlay) -> OverlayRecord:
        """Create the VXLAN port of ``network`` or bring its peers to ``req.peers``."""
        net = self.networks.get(network)  # UnknownNetwork (404) if there is none
        local = _ipv4(req.local, "local")
        peers = sorted({_ipv4(p, "peer") for p in req.peers}, key=ipaddress.IPv4Address)
        if local in peers:
            raise BadRequest(f"peer {local} is this host's own address")
        with self._lock:
            recs = self._load()
            for other in recs.values():
                if other.vni == req.vni and other.network != network:
                    raise Conflict(f"VNI {req.vni} is already used by network {other.network!r}")
            old = recs.get(network)
            if old and (old.vni, old.local, old.port) != (req.vni, local, req.port):
                self._del_link(old.device)  # VNI or address changed: make it anew
                old = None
            dev = device_name(req.vni)
            with IPRoute() as ipr:
                if not _has_addr(ipr, local):
                    raise BadRequest(f"local address {local} is not an address of this host")
                if old is None:
                    self._make_link(ipr, dev, req.vni, local, req.port, net.bridge)
                idx = _index(ipr, dev)
                have = {e.get_attr("NDA_DST") for e in ipr.fdb("dump", ifindex=idx)
                        if e.get_attr("NDA_LLADDR") == ZERO_MAC}
                try:
                    for p in sorted(have - set(peers)):
                        ipr.fdb("del", ifindex=idx, lladdr=ZERO_MAC, dst=p)
                    for p in peers:
                        if p not in have:
                            ipr.fdb("append", ifindex=idx, lladdr=ZERO_MAC, dst=p)
                except NetlinkError as exc:
                    raise NetworkError(f"cannot set the peers of {dev}: {exc}") from None
            rec = OverlayRecord(network, req.vni, local, peers, dev, req.port)
            recs[network] = rec
            self._save(recs)
            return rec

    def delete(self, network: str) -> None:
        with self._lock:
            recs = self._load()
            rec = recs.pop(network, None)
            if rec is None:
                raise UnknownOverlay(f"network {network!r} has no overlay")
            self._del_link(rec.device)
            self._save(recs)

    def mtu(self, rec: OverlayRecord) -> int | None:
        try:
            with IPRoute() as ipr:
                links = ipr.get_links(_index(ipr, rec.device))
                return int(links[0].get_attr("IFLA_MTU"))
        except (NetlinkError, NetworkError, IndexError):
            return None

    # -- netlink --------------------------------------------------------------------------
    def _make_link(self, ipr: IPRoute, dev: str, vni: int, local: str, port: int,
                   bridge: str) -> None:
        if ipr.link_lookup(ifname=dev):
            raise Conflict(f"a host interface {dev} already exists")
        try:
            mtu = _underlay_mtu(ipr, local) - VXLAN_OVERHEAD
            ipr.link("add", ifname=dev, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                     vxlan_port=port, vxlan_learning=1, mtu=mtu)
            idx = _index(ipr, dev)
            br = ipr.link_lookup(ifname=bridge)
            if not br:
                raise NetworkError(f"bridge {bridge} is gone")
            ipr.link("set", index=idx, master=br[0], state="up")
        except (NetlinkError, NetworkError) as exc:
            self._del_link(dev)
            raise NetworkError(f"cannot create VXLAN port {dev}: {exc}") from None

    @staticmethod
    def _del_link(dev: str) -> None:
        try:
            with IPRoute() as ipr:
                for idx in ipr.link_lookup(ifname=dev):
                    ipr.link("del", index=idx)
        except NetlinkError:
            pass


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise BadRequest(f"{what} {text!r} is not an IPv4 address") from None


def _index(ipr: IPRoute, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise NetworkError(f"interface {dev} is gone")
    return int(found[0])


def _has_addr(ipr: IPRoute, ip: str) -> bool:
    return any(a.get_attr("IFA_ADDRESS") == ip for a in ipr.get_addr(family=2))


def _underlay_mtu(ipr: IPRoute, ip: str) -> int:
    for a in ipr.get_addr(family=2):
        if a.get_attr("IFA_ADDRESS") == ip:
            links = ipr.get_links(a["index"])
            if links:
                return int(links[0].get_attr("IFLA_MTU") or 1500)
    return 1500


def overlay_router(networks: NetworkStore) -> APIRouter:
    """The overlay routes; include them in the agent's authenticated router."""
    store = OverlayStore(networks)
    r = APIRouter(tags=["overlays"])

    def out(rec: OverlayRecord) -> OverlayOut:
        return OverlayOut(**asdict(rec), mtu=store.mtu(rec))

    @r.get("/overlays", response_model=list[OverlayOut])
    def list_overlays() -> list[OverlayOut]:
        return [out(x) for x in store.list()]

    @r.put("/networks/{name}/overlay", response_model=OverlayOut)
    def set_overlay(name: str, req: SetOverlay) -> OverlayOut:
        return out(store.set(name, req))

    @r.delete("/networks/{name}/overlay", status_code=204)
    def delete_overlay(name: str) -> Response:
        store.delete(name)
        return Response(status_code=204)

    return r
