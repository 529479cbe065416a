"""The collector and the reconcile loop: what the agents say, against what the store wants.

Every ``monitor_interval_s`` the collector asks each host's agent for ``/host``, ``/vms`` and
``/images`` (all hosts at once), then in one transaction:

- a host that answers is ``up`` (capacity, load, images, samples updated); one that missed
  ``down_after`` polls in a row is ``down`` and its VMs' actual state becomes ``unknown`` —
  nothing is deleted;
- each VM's ``actual`` becomes what its agent says, or ``missing`` if the agent does not
  know it (VMs a job is working on are left alone).

Then :data:`RECONCILE` decides, VM by VM, what closes the gap between desired and actual;
the actions run in a small pool, each holding the VM's lock, with back-off after failures.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select

from vnix.cluster import metrics
from vnix.cluster.agents import AgentClient
from vnix.cluster.errors import AgentError
from vnix.cluster.ops_admin import sync_images
from vnix.cluster.ops_vm import delete_vm
from vnix.cluster.tables import Host, Vm, utcnow
from vnix.errors import VnixError
from vnix.node import models as agent

if TYPE_CHECKING:
    from vnix.cluster.manager import Manager

log = logging.getLogger(__name__)

# (desired, actual) -> the agent call that moves the VM towards what is desired.
RECONCILE: dict[tuple[str, str], str] = {
    ("running", "defined"): "start_vm",
    ("running", "stopped"): "start_vm",
    ("running", "crashed"): "start_vm",
    ("running", "paused"): "resume_vm",
    ("running", "suspended"): "resume_from_disk_vm",
    ("stopped", "running"): "stop_vm",
    ("stopped", "paused"): "force_stop_vm",
    ("stopped", "crashed"): "force_stop_vm",
    ("paused", "running"): "pause_vm",
    ("suspended", "running"): "suspend_vm",
    ("suspended", "paused"): "suspend_vm",
}
RECREATE_FROM = frozenset({"missing"})  # the agent lost the VM: make it again from its spec
MAX_BACKOFF_S = 300.0


@dataclass
class Poll:
    host: str
    ok: bool
    error: str = ""
    info: agent.HostOut | None = None
    vms: list[agent.VmOut] = field(default_factory=list)
    images: list[agent.ImageOut] = field(default_factory=list)


class Monitor:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._misses: dict[str, int] = {}
        self._retry: dict[str, tuple[int, float]] = {}  # vm -> (failures, not before)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="reconcile")
        self._polls = 0
        self.actions: list[tuple[str, str]] = []  # (vm, call) done by reconcile: for tests/UI

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the loop must survive any host or database hiccup
                log.exception("monitor poll")
            self._stop.wait(self.manager.config.monitor_interval_s)

    # -- collecting -----------------------------------------------------------------------
    def poll_once(self, reconcile: bool = True) -> dict[str, Poll]:
        started = utcnow()
        with self.manager.store.session() as s:
            hosts = [(h.name, h.url, h.token) for h in s.scalars(select(Host))]
        clients = {n: self.manager.agent_for(n, u, t) for n, u, t in hosts}
        polls: dict[str, Poll] = {}
        if clients:
            with ThreadPoolExecutor(max_workers=min(16, len(clients)),
                                    thread_name_prefix="poll") as pool:
                for p in pool.map(_poll, clients.values()):
                    polls[p.host] = p
        with self.manager.store.session() as s:
            for p in polls.values():
                self._record(s, p, started)
            self._polls += 1
            metrics.maintain(s, timedelta(seconds=self.manager.config.metrics_retention_s))
        if reconcile:
            self.reconcile()
        return polls

    def _record(self, s: object, p: Poll, started: datetime) -> None:
        from sqlalchemy.orm import Session

        assert isinstance(s, Session)
        host = s.get(Host, p.host)
        if host is None:
            return
        vms = list(s.scalars(select(Vm).where(Vm.host == p.host)))
        if not p.ok or p.info is None:
            self._misses[p.host] = self._misses.get(p.host, 0) + 1
            if self._misses[p.host] >= self.manager.config.down_after and host.state != "down":
                log.warning("host %s is down: %s", p.host, p.error)
                host.state, host.detail = "down", p.error
            if host.state == "down":
                for vm in vms:
                    if vm.actual != "unknown":
                        vm.actual, vm.detail = "unknown", f"host {p.host} is down"
            return
        self._misses[p.host] = 0
        if host.state != "up":
            log.warning("host %s is up again", p.host)
        info = p.info
        host.state, host.detail, host.last_seen = "up", "", utcnow()
        host.cpus, host.memory_mib = info.cpus, info.memory_total_mib
        host.cpu_percent, host.memory_available_mib = info.cpu_percent, info.memory_available_mib
        host.drivers = info.drivers
        sync_images(s, p.host, p.images, asked=started)
        seen = {v.name: v for v in p.vms}
        samples = metrics.host_samples(p.host, info)
        for vm in vms:
            if _aware(vm.updated) > started or self.manager.vm_lock(vm.name).locked():
                continue  # a job changed it while we asked: its word is newer
            out = seen.get(vm.name)
            if out is not None:
                vm.actual, vm.detail = out.state, out.detail
                samples += metrics.vm_samples(out)
            elif vm.actual not in ("creating", "pending"):
                vm.actual, vm.detail = "missing", f"host {p.host} does not know this VM"
        metrics.write(s, samples)

    # -- reconciling ----------------------------------------------------------------------
    def reconcile(self) -> list[tuple[str, str]]:
        """Start the actions that close the gap; returns what was started (vm, call)."""
        todo: list[tuple[str, str]] = []
        with self.manager.store.session() as s:
            up = {h.name for h in s.scalars(select(Host).where(Host.state == "up"))}
            for vm in s.scalars(select(Vm)):
                if vm.host not in up or self.manager.vm_lock(vm.name).locked():
                    continue
                if vm.desired == "deleted":
                    call = "delete"
                elif vm.actual in RECREATE_FROM:
                    call = "create_vm"
                else:
                    call = RECONCILE.get((vm.desired, vm.actual), "")
                if call and self._due(vm.name):
                    todo.append((vm.name, call))
        for name, call in todo:
            self._pool.submit(self._act, name, call)
        return todo

    def _due(self, name: str) -> bool:
        failures, not_before = self._retry.get(name, (0, 0.0))
        return time.monotonic() >= not_before

    def _act(self, name: str, call: str) -> None:
        lock = self.manager.vm_lock(name)
        if call == "delete":
            try:
                delete_vm(self.manager, name, lambda line: log.info("reconcile: %s", line))
                self._done(name, call, None)
            except VnixError as exc:
                self._done(name, call, exc)
            return
        if not lock.acquire(blocking=False):
            return
        try:
            with self.manager.store.session() as s:
                vm = s.get(Vm, name)
                if vm is None or vm.host is None:
                    return
                host, spec, desired = vm.host, dict(vm.spec), vm.desired
            client = self.manager.agent(host)
            log.info("reconcile: %s %s on %s", call, name, host)
            if call == "create_vm":
                req = agent.CreateVm.model_validate(spec | {"start": desired == "running"})
                out = client.call("create_vm", req)
            elif call == "stop_vm":
                out = client.call(call, agent.StopVm(timeout=30, force_after=True), name=name)
            else:
                out = client.call(call, name=name)
            with self.manager.store.session() as s:
                row = s.get(Vm, name)
                if row is not None:
                    row.actual, row.detail = out.state, f"reconciled: {call}"
            self._done(name, call, None)
        except (AgentError, VnixError) as exc:
            self._done(name, call, exc)
        finally:
            lock.release()

    def _done(self, name: str, call: str, exc: VnixError | None) -> None:
        self.actions.append((name, call))
        if exc is None:
            self._retry.pop(name, None)
            return
        failures = self._retry.get(name, (0, 0.0))[0] + 1
        wait = min(MAX_BACKOFF_S, self.manager.config.monitor_interval_s * 2 ** failures)
        self._retry[name] = (failures, time.monotonic() + wait)
        log.warning("reconcile %s %s failed (%d, next try in %.0f s): %s",
                    call, name, failures, wait, exc)
        with self.manager.store.session() as s:
            row = s.get(Vm, name)
            if row is not None:
                row.detail = f"reconcile {call} failed: {exc}"


def _poll(client: AgentClient) -> Poll:
    try:
        return Poll(client.host, True, info=client.call("host"), vms=client.call("list_vms"),
                    images=client.call("list_images"))
    except AgentError as exc:
        return Poll(client.host, False, error=exc.message)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
