"""Deploying cluster nodes: where each goes, what each gets, and the networks under them.

Placement (:func:`plan_nodes`, in the operation's ``check``, one node after the other so each
sees the ones before): among the hosts the group allows (``<placement><host>``) that fit
(:func:`vnix.cluster.scheduler.why_not`: up, image, CPUs, memory, anti-affinity), pick

* ``any``: the host with the most free memory (the scheduler's own rule);
* ``spread``: the host with the fewest nodes of this group, then the most free memory;
* ``anti-affinity``: as ``any``, never two nodes of the group on one host (kept in the store,
  so scaling up later keeps to it).

The chosen host is then pinned in M1's :class:`~vnix.cluster.ops_vm.CreateVm`, whose own
check (quota, image, capacity) records the VM; the deploy job creates all of them in parallel
across hosts (``JobContext.parallel``), each from a qcow2 overlay of the image on its host.

``source="snapshot" snapshot="NAME"``: the nodes are clones (native driver, on hosts whose
agent has it). Each node is a :class:`~vnix.cluster.ops_vm.CreateVm` with ``snapshot=NAME``
and ``make_snapshot`` (the path a single VM from a snapshot takes too), so its agent CreateVm
names the golden snapshot ``NAME`` of the group's image; the host's agent makes
it on the first clone that needs it (a template VM of the image booted to its readiness line
and saved, :mod:`vnix.node.snapshots`) and reuses it afterwards, so there is one golden
snapshot per (image, host). Each clone is then a fork of that host's warm clone server: RAM
MAP_PRIVATE from the snapshot file, its own overlay, MAC and vsock CID. Machine size is the
snapshot's (the group's memory and cpus when it is made). Afterwards they are ordinary VMs.

Networks (:func:`ensure_networks`, in the job, before the VMs): each cluster network is the
agent network ``vc<vni>`` on every host that holds a node on it; on more than one host the
bridges are joined by a VXLAN overlay (:mod:`vnix.node.overlay`) with the hosts' agent
addresses as endpoints. With ``dhcp="true"`` only the first host runs dnsmasq (one DHCP server
on the stretched segment); nodes also get a static address (``.10`` up) recorded in the store.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlparse

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from vnix.cluster import agents as agent_calls
from vnix.cluster.errors import AgentError, BadRequest, NoCapacity, NotFound
from vnix.cluster.manager import Manager, group_key
from vnix.cluster.ops_vm import CreateVm, clone_driver
from vnix.cluster.operations import OpContext
from vnix.cluster.scheduler import HostLoad, Request, why_not
from vnix.cluster.tables import Host, Setting, Vm
from vnix.cluster.vcluster import records
from vnix.cluster.vcluster.model import ClusterSpec, Group, Profile, node_name
from vnix.images.guest_init import with_network
from vnix.node import models as agent
from vnix.node.overlay import OverlayOut, SetOverlay

log = logging.getLogger(__name__)

# The overlay routes in the agent call table (vnix.cluster.agents.CALLS: one row per route).
agent_calls.CALLS.setdefault("set_overlay", agent_calls.Call(
    "PUT", "/networks/{name}/overlay", SetOverlay, OverlayOut))
agent_calls.CALLS.setdefault("delete_overlay", agent_calls.Call(
    "DELETE", "/networks/{name}/overlay"))
agent_calls._ADAPTERS.setdefault("set_overlay", TypeAdapter(OverlayOut))


# -- placement -------------------------------------------------------------------------------
def choose_host(loads: list[HostLoad], req: Request, group: Group, counts: dict[str, int],
                ctx: OpContext) -> str:
    oc = ctx.manager.config.overcommit
    allowed = set(group.placement.hosts)
    cands = [h for h in loads if not allowed or h.name in allowed]
    what = f"{req.memory_mib} MiB and {req.cpus} vCPU{'s' if req.cpus != 1 else ''}"
    if not cands:
        raise NoCapacity(f"group {group.name!r}: none of its hosts "
                         f"({', '.join(sorted(allowed)) or 'any'}) is registered")
    fits, reasons = [], []
    for h in sorted(cands, key=lambda h: h.name):
        why = why_not(h, req, oc)
        (reasons.append(why) if why else fits.append(h))
    if not fits:
        raise NoCapacity(f"group {group.name!r}: no host can take {what}: {', '.join(reasons)}")
    if group.placement.policy == "spread":
        best = min(fits, key=lambda h: (counts.get(h.name, 0), -h.free_memory_mib(oc),
                                        -h.free_cpus(oc)))
    else:
        best = max(fits, key=lambda h: (h.free_memory_mib(oc), h.free_cpus(oc)))
    return best.name


def plan_nodes(ctx: OpContext, cluster: str, spec: ClusterSpec, group: Group,
               indices: list[int], owner: str, saved: dict[str, Profile],
               taken_ips: set[str], start: bool = True) -> list[CreateVm]:
    """Place and record nodes ``indices`` of ``group``; returns their CreateVm operations."""
    s = ctx.session
    cfg = spec.resolve(group, saved)
    driver = cfg.driver
    snapshot = cfg.snapshot if cfg.source == "snapshot" else None
    if snapshot:  # refused for the group before any node is placed
        driver = clone_driver(driver, f"group {group.name!r}: source=\"snapshot\"")
    anti = group.placement.policy == "anti-affinity"
    key = group_key(cluster, group.name) if anti else None
    net = spec.network(cfg.network) if cfg.network else None
    vni = records.vni_of(s, cluster, net.name, allocate=True) if net else None
    images = {i for h in ctx.manager.host_loads(s) for i in h.images}
    if indices and cfg.image not in images:
        raise NotFound(f"group {group.name!r}: no image {cfg.image!r} on any host "
                       f"(known: {', '.join(sorted(images)) or 'none'})")
    out = []
    for i in indices:
        name = node_name(cluster, group.name, i)
        counts: dict[str, int] = {}
        for vm in records.nodes(s, cluster, group.name):
            if vm.host:
                counts[vm.host] = counts.get(vm.host, 0) + 1
        req = Request(cfg.cpus, cfg.memory_mib, cfg.image, key, clone=bool(snapshot))
        host = choose_host(ctx.manager.host_loads(s), req, group, counts, ctx)
        nics = []
        if net is not None and vni is not None:
            nics.append(agent.NicRequest(network=records.agent_network(vni),
                                         ip=records.next_address(s, cluster, net.subnet,
                                                                 taken_ips)))
        op = CreateVm(name=name, image=cfg.image, memory=f"{cfg.memory_mib}M", cpus=cfg.cpus,
                      driver=driver, cmdline=cfg.cmdline, nics=nics, start=start,
                      host=host, cluster=cluster, group=group.name, anti_affinity=anti,
                      owner=owner, snapshot=snapshot, make_snapshot=bool(snapshot))
        op.check(ctx)  # quota, image, capacity on the pinned host; records the VM row
        out.append(op)
    return out


def name_nodes(manager: Manager, names: list[str], log_line: Callable[[str], None]) -> None:
    """Give every node its name as the guest's hostname (``vnix.hostname=``) and its static
    address on eth0 (``vnix.ip=ADDR/PREFIX,gw=GW``, the gateway being the network's bridge
    on each host), keeping the image's own command line (which only its host's agent knows)
    unless a profile set one. The tiny guest's /init reads both (vnix.images.guest_init)."""
    cache: dict[tuple[str, str], str] = {}
    for name in names:
        with manager.store.session() as s:
            vm = s.get(Vm, name)
            if vm is None or vm.host is None:
                continue
            host, image, base = vm.host, vm.image, vm.spec.get("cmdline")
            ips = records.node_ips(vm)
        if base is None:
            if (host, image) not in cache:
                try:
                    info: agent.ImageOut = manager.agent(host).call("image_info", name=image)
                    cache[(host, image)] = info.cmdline
                except AgentError as exc:
                    log_line(f"{name}: image {image} on {host}: {exc}")
                    continue
            base = cache[(host, image)]
        cmdline = base
        if "vnix.hostname=" not in cmdline:
            cmdline = f"{cmdline} vnix.hostname={name}".strip()
        if ips:
            iface = ipaddress.IPv4Interface(ips[0])
            cmdline = with_network(cmdline, str(iface), str(iface.network.network_address + 1))
        if cmdline == base:
            continue
        with manager.store.session() as s:
            vm = s.get(Vm, name)
            if vm is not None:
                vm.spec = {**vm.spec, "cmdline": cmdline}


# -- networks --------------------------------------------------------------------------------
def underlay_address(url: str) -> str:
    """The IPv4 address a host's agent is reached at: its VXLAN endpoint."""
    host = urlparse(url).hostname or ""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise BadRequest(f"cannot resolve {host!r} for VXLAN: {exc}") from None


def ensure_networks(manager: Manager, cluster: str, spec: ClusterSpec,
                    log_line: Callable[[str], None]) -> list[str]:
    """Make each cluster network exist on exactly the hosts that hold its nodes, joined by
    VXLAN when there are several; remove it from hosts that no longer need it. Returns the
    problems (one line each) instead of stopping at the first."""
    problems: list[str] = []
    with manager.store.session() as s:
        hosts = {h.name: (h.url, h.state) for h in s.scalars(select(Host))}
        plan = []
        for net in spec.networks:
            vni = records.vni_of(s, cluster, net.name)
            if vni is None:
                continue
            groups = {g.name for g in spec.groups if g.network == net.name}
            where = sorted({vm.host for vm in records.nodes(s, cluster)
                            if vm.group in groups and vm.host and vm.desired != "deleted"})
            had = _hosts_with_network(s, cluster, net.name)
            plan.append((net, vni, where, had))
    for net, vni, where, had in plan:
        name = records.agent_network(vni)
        up = [h for h in where if hosts.get(h, ("", "down"))[1] == "up"]
        for i, h in enumerate(up):
            try:
                client = manager.agent(h)
                have = {n.name for n in client.call("list_networks")}
                if name not in have:
                    client.call("create_network", agent.CreateNetwork(
                        name=name, cidr=net.subnet, dhcp=net.dhcp and i == 0))
                    log_line(f"network {net.name} ({name}, {net.subnet}) on {h}")
            except AgentError as exc:
                problems.append(f"network {net.name} on {h}: {exc.message}")
        if len(up) > 1:
            try:
                addrs = {h: underlay_address(hosts[h][0]) for h in up}
            except BadRequest as exc:
                problems.append(f"network {net.name}: no VXLAN: {exc}")
                addrs = {}
            for h in addrs:
                body = SetOverlay(vni=vni, local=addrs[h],
                                  peers=[a for o, a in addrs.items() if o != h])
                try:
                    manager.agent(h).call("set_overlay", body, name=name)
                except AgentError as exc:
                    problems.append(f"VXLAN {vni} on {h}: {exc.message}")
            log_line(f"network {net.name}: VXLAN {vni} between {', '.join(up)}")
        for h in sorted(set(had) - set(where)):
            if hosts.get(h, ("", "down"))[1] == "up":
                drop_network_on(manager, h, name, log_line)
        with manager.store.session() as s:
            _record_hosts(s, cluster, net.name, up)
    return problems


def drop_network_on(manager: Manager, host: str, name: str,
                    log_line: Callable[[str], None]) -> None:
    client = manager.agent(host)
    for call in ("delete_overlay", "delete_network"):
        try:
            client.call(call, name=name)
        except AgentError as exc:
            if exc.status == 409:  # a VM moved into another cluster still uses it
                log_line(f"{name} on {host} kept: {exc.message}")
                return
            if exc.status != 404:
                log_line(f"{name} on {host}: {call}: {exc.message}")


def drop_networks(manager: Manager, cluster: str, spec: ClusterSpec,
                  log_line: Callable[[str], None]) -> None:
    with manager.store.session() as s:
        todo = [(records.vni_of(s, cluster, n.name), _hosts_with_network(s, cluster, n.name))
                for n in spec.networks]
    for vni, where in todo:
        if vni is None:
            continue
        for h in where:
            try:
                drop_network_on(manager, h, records.agent_network(vni), log_line)
            except Exception as exc:  # every host is tried
                log_line(f"network vc{vni} on {h}: {exc}")


def _hosts_with_network(s: Session, cluster: str, network: str) -> list[str]:
    row = s.get(Setting, f"vxhosts:{cluster}/{network}")
    return list(row.value.split(",")) if row and row.value else []


def _record_hosts(s: Session, cluster: str, network: str, hosts: list[str]) -> None:
    key = f"vxhosts:{cluster}/{network}"
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=",".join(hosts)))
    else:
        row.value = ",".join(hosts)
