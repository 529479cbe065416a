"""What the manager's store holds about virtual clusters, and the lookups the operations share.

* ``clusters`` row: owner, state (``creating|active|degraded|deleting``) and ``xml`` — the
  cluster's *current* description (after scaling or moves), so an export is that text with the
  saved profiles it uses written in.
* ``cluster_groups`` rows: one per group (count, the group as JSON, anti-affinity).
* ``vms`` rows with ``cluster``/``group`` set: the nodes (``<cluster>-<group>-<i>``).
* ``settings``: ``profile:<name>`` (a saved :class:`Profile` as JSON, with its owner) and
  ``vxlan:<cluster>/<network>`` (the VNI of a cluster network; the agent network is
  ``vc<vni>``, its bridge ``vnb-vc<vni>``).
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vnix.cluster.auth import Actor
from vnix.cluster.errors import BadRequest, Conflict, Forbidden, NotFound
from vnix.cluster.tables import Cluster, ClusterGroup, Setting, Vm
from vnix.cluster.vcluster.model import ClusterSpec, Profile
from vnix.cluster.vcluster.xmlio import export_cluster, parse_cluster

PROFILE_KEY = "profile:"
VXLAN_KEY = "vxlan:"
FIRST_VNI = 4096
FIRST_HOST_OFFSET = 10  # static node addresses start at .10 (.1 is each host's bridge)


# -- clusters -------------------------------------------------------------------------------
def visible_cluster(s: Session, actor: Actor, name: str, touch: bool = False) -> Cluster:
    row = s.get(Cluster, name)
    if row is None or not actor.may_see(row.owner):
        raise NotFound(f"no cluster {name!r}")
    if touch and not actor.may_touch(row.owner):
        raise Forbidden(f"{actor.role.value} {actor.name!r} may not change cluster {name!r} "
                        f"(owned by {row.owner})")
    return row


def spec_of(row: Cluster) -> ClusterSpec:
    return parse_cluster(row.xml, f"cluster {row.name}")


def save_spec(s: Session, row: Cluster, spec: ClusterSpec) -> None:
    """Store ``spec`` as the cluster's current description (XML and group rows)."""
    row.xml = export_cluster(spec).decode()
    groups = {g.name: g for g in row.groups}
    for g in spec.groups:
        cg = groups.pop(g.name, None)
        if cg is None:
            cg = ClusterGroup(cluster=row.name, name=g.name)
            row.groups.append(cg)
        cg.count = g.count
        cg.spec = g.model_dump(mode="json")
        cg.anti_affinity = g.placement.policy == "anti-affinity"
    for cg in groups.values():
        row.groups.remove(cg)


def nodes(s: Session, cluster: str, group: str | None = None) -> list[Vm]:
    q = select(Vm).where(Vm.cluster == cluster)
    if group is not None:
        q = q.where(Vm.group == group)
    return sorted(s.scalars(q), key=lambda v: node_sort_key(v.name))


def node_sort_key(name: str) -> tuple[str, int]:
    head, _, idx = name.rpartition("-")
    return (head, int(idx)) if idx.isdigit() else (name, -1)


def check_subnets_free(s: Session, spec: ClusterSpec, skip: str | None = None) -> None:
    """Conflict if a network of ``spec`` overlaps one of another cluster: on a host they would
    be two bridges with the same addresses."""
    mine = [(n.name, ipaddress.IPv4Network(n.subnet)) for n in spec.networks]
    if not mine:
        return
    for row in s.scalars(select(Cluster).where(Cluster.name != (skip or spec.name))):
        try:
            other = spec_of(row)
        except BadRequest:
            continue
        for on in other.networks:
            onet = ipaddress.IPv4Network(on.subnet)
            for name, net in mine:
                if net.overlaps(onet):
                    raise Conflict(f"network {name!r} ({net}) overlaps network {on.name!r} "
                                   f"({onet}) of cluster {row.name!r}")


# -- profiles --------------------------------------------------------------------------------
def saved_profiles(s: Session) -> dict[str, Profile]:
    out = {}
    for row in s.scalars(select(Setting).where(Setting.key.startswith(PROFILE_KEY))):
        data = json.loads(row.value)
        out[row.key[len(PROFILE_KEY):]] = Profile.model_validate(data["profile"])
    return out


def profile_owner(s: Session, name: str) -> str | None:
    row = s.get(Setting, PROFILE_KEY + name)
    return str(json.loads(row.value)["owner"]) if row else None


def put_profile(s: Session, profile: Profile, owner: str) -> None:
    key = PROFILE_KEY + profile.name
    if len(key) > 64:
        raise BadRequest(f"profile name {profile.name!r} is too long (56 characters at most)")
    value = json.dumps({"owner": owner, "profile": profile.model_dump(mode="json")})
    row = s.get(Setting, key)
    if row:
        row.value = value
    else:
        s.add(Setting(key=key, value=value))


def drop_profile(s: Session, name: str) -> None:
    s.execute(delete(Setting).where(Setting.key == PROFILE_KEY + name))


# -- networks: VNIs and addresses -------------------------------------------------------------
def vni_of(s: Session, cluster: str, network: str, allocate: bool = False) -> int | None:
    key = f"{VXLAN_KEY}{cluster}/{network}"
    row = s.get(Setting, key)
    if row is not None:
        return int(row.value)
    if not allocate:
        return None
    used = {int(r.value) for r in s.scalars(select(Setting).where(
        Setting.key.startswith(VXLAN_KEY)))}
    vni = FIRST_VNI
    while vni in used:
        vni += 1
    s.add(Setting(key=key, value=str(vni)))
    s.flush()
    return vni


def drop_vnis(s: Session, cluster: str) -> None:
    for prefix in (VXLAN_KEY, "vxhosts:"):
        s.execute(delete(Setting).where(Setting.key.startswith(f"{prefix}{cluster}/")))


def agent_network(vni: int) -> str:
    return f"vc{vni}"


def node_ips(vm: Vm) -> list[str]:
    return [str(n.get("ip")) for n in (vm.spec or {}).get("nics", []) if n.get("ip")]


def next_address(s: Session, cluster: str, subnet: str, taken: set[str]) -> str:
    """The lowest free static address (.10 up) of ``subnet`` among the cluster's nodes."""
    net = ipaddress.IPv4Network(subnet)
    used = set(taken)
    for vm in nodes(s, cluster):
        used.update(ip.split("/")[0] for ip in node_ips(vm))
    hosts = list(net.hosts())
    for addr in hosts[FIRST_HOST_OFFSET - 1:]:
        if str(addr) not in used:
            taken.add(str(addr))
            return f"{addr}/{net.prefixlen}"
    raise Conflict(f"network {subnet} has no free address left")


def describe_nodes(s: Session, cluster: str) -> list[dict[str, Any]]:
    return [{"name": v.name, "group": v.group, "host": v.host, "desired": v.desired,
             "actual": v.actual, "cpus": v.cpus, "memory_mib": v.memory_mib,
             "ips": node_ips(v), "detail": v.detail} for v in nodes(s, cluster)]
