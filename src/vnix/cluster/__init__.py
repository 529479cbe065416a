"""VNIX, the manager: store, typed operations run as jobs, scheduler, monitor, reconcile.

Public surface (see each module's docstring)::

    Store(url)                                   vnix.cluster.store     SQLAlchemy + Alembic
    Manager(store, ManagerConfig()).start()      vnix.cluster.manager   the one door: submit()
    Operation, register, parse_operation         vnix.cluster.operations
    CreateVm, CreateVms, StartVm, ...            vnix.cluster.ops_vm
    RegisterHost, CreateUser, SetQuota, ...      vnix.cluster.ops_admin
    Actor, Role                                  vnix.cluster.auth
    AgentClient, CALLS, call_many                vnix.cluster.agents
    place, Overcommit, HostLoad                  vnix.cluster.scheduler
    ClusterError and its tree                    vnix.cluster.errors

``vnix.cluster.vcluster`` is kept for the XML virtual clusters.
"""
from __future__ import annotations

from vnix.cluster.errors import ClusterError

__all__ = ["ClusterError"]
