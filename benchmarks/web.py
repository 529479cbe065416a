#!/usr/bin/env python3
"""Dashboard benchmark: the server time of every page with 100 VMs in the store.

Builds a manager on SQLite over 4 in-process fake-driver agents (``vnix.cluster.testing``),
creates 80 VMs in one batch and a 20-node virtual cluster (100 VMs), writes an hour of raw
samples for every host and VM at a 5-second interval plus a day of minute averages (what
the collector and :func:`vnix.cluster.metrics.maintain` leave after a day), then times each
page, fragment and data route through the ASGI app (Starlette's TestClient: no network, so
the time is the server's, plus the in-process client's small overhead).

Reports the median, p95 and worst of ``--runs`` requests per route (after 2 warm-ups) and
whether every p95 is within the 300 ms goal. ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from vnix.api.app import create_api
from vnix.cluster import metrics
from vnix.cluster.auth import Actor, Role
from vnix.cluster.manager import ManagerConfig
from vnix.cluster.metrics import Sample
from vnix.cluster.scheduler import Overcommit
from vnix.cluster.ops_vm import CreateVm, CreateVms
from vnix.cluster.tables import utcnow
from vnix.cluster.testing import ADMIN_PASSWORD, FakeAgents, fake_manager
from vnix.cluster.vcluster.ops import CreateCluster

GOAL_MS = 300.0
ADMIN = Actor("admin", Role.ADMIN)
HOSTS = ["h1", "h2", "h3", "h4"]
CLUSTER = """<?xml version="1.0"?>
<cluster name="bench">
  <profile name="small" memory="64M"/>
  <group name="head" count="1" image="tiny" profile="small"/>
  <group name="work" count="19" image="tiny" profile="small"/>
</cluster>
"""


def fill_samples(manager: object, vms: list[str], interval_s: int = 5) -> int:
    """An hour of raw samples and a day of minute averages for every host and VM."""
    now = utcnow()
    written = 0
    store = manager.store  # type: ignore[attr-defined]
    exits = ("io", "mmio", "hlt")
    for i in range(3600 // interval_s, 0, -1):
        ts = now - timedelta(seconds=i * interval_s)
        rows = [Sample("host", h, m, v) for h in HOSTS
                for m, v in (("cpu_percent", 20 + i % 50), ("memory_used_mib", 8000 + i),
                             ("vms", 25.0))]
        for n, vm in enumerate(vms):
            t = (3600 - i * interval_s) * 0.05 + n
            rows += [Sample("vm", vm, "cpu_time_s", t), Sample("vm", vm, "memory_mib", 64.0),
                     Sample("vm", vm, "rss_mib", 60.0 + i % 4),
                     Sample("vm", vm, "balloon_mib", 64.0)]
            rows += [Sample("vm", vm, f"exits_{e}", float(i * 10)) for e in exits]
        with store.session() as s:
            written += metrics.write(s, rows, ts)
    for minute in range(24 * 60, 60, -1):
        ts = now - timedelta(minutes=minute)
        rows = [Sample("host", h, "cpu_percent", 30.0) for h in HOSTS]
        rows += [Sample("vm", vm, "memory_mib", 64.0) for vm in vms]
        with store.session() as s:
            written += metrics.write(s, rows, ts, step=metrics.MINUTE)
    return written


def time_route(client: TestClient, path: str, runs: int) -> dict[str, float]:
    for _ in range(2):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
            "max_ms": round(times[-1], 1), "bytes": len(r.content)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up (its finally blocks)

    with tempfile.TemporaryDirectory(prefix="vnix-web-bench-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        agents = FakeAgents(root / "agents", HOSTS)
        manager = fake_manager(root, agents, ManagerConfig(
            monitor=False, workers=4, overcommit=Overcommit(cpu_ratio=16.0)))
        manager.start()
        try:
            job = manager.submit(CreateVms(vms=[CreateVm(name=f"vm-{i}", memory="64M")
                                                for i in range(80)]), ADMIN, wait=True)
            cjob = manager.submit(CreateCluster(xml=CLUSTER), ADMIN, wait=True)
            with manager.store.session() as s:
                from sqlalchemy import func, select

                from vnix.cluster.tables import Job, Vm

                n_vms = s.scalar(select(func.count(Vm.name)))
                states = [s.get(Job, j).state for j in (job, cjob)]
                vms = list(s.scalars(select(Vm.name)))
            assert n_vms == 100 and states == ["succeeded", "succeeded"], (n_vms, states)
            manager.monitor.poll_once(reconcile=False)
            samples = fill_samples(manager, vms)
            setup_s = time.monotonic() - t0

            with TestClient(create_api(manager, own_manager=False)) as client:
                r = client.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD})
                assert r.status_code == 200 and "Overview" in r.text
                routes = {
                    "login page": "/login",
                    "overview": "/",
                    "overview fragment (polled)": "/ui/overview",
                    "host page": "/hosts/h1",
                    "VM page": "/vms/vm-7",
                    "VM state fragment (polled)": "/ui/vms/vm-7/state",
                    "cluster page": "/clusters/bench",
                    "cluster nodes fragment (polled)": "/ui/clusters/bench/nodes",
                    "cluster export": "/ui/clusters/bench/export",
                    "users page": "/users",
                    "job fragment (polled)": f"/ui/jobs/{job}",
                    "graph 15 min (raw)": "/ui/graph/vm/vm-7/cpu_time_s?window=15m",
                    "graph 1 h (raw)": "/ui/graph/host/h1/cpu_percent?window=1h",
                    "graph 24 h (minutes + raw)": "/ui/graph/vm/vm-7/memory_mib?window=24h",
                    "/metrics": "/metrics",
                }
                results = {name: time_route(client, path, args.runs)
                           for name, path in routes.items()}
        finally:
            manager.stop()
    worst = max(r["p95_ms"] for r in results.values())
    out = {"vms": 100, "hosts": len(HOSTS), "samples": samples, "setup_s": round(setup_s, 1),
           "runs": args.runs, "goal_ms": GOAL_MS, "worst_p95_ms": worst,
           "within_goal": worst <= GOAL_MS, "routes": results}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['vms']} VMs on {len(HOSTS)} hosts, {samples} samples "
              f"(set up in {out['setup_s']} s); {args.runs} requests per route")
        print(f"{'route':34} {'median':>8} {'p95':>8} {'max':>8} {'bytes':>8}")
        for name, r in results.items():
            print(f"{name:34} {r['median_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f} "
                  f"{r['bytes']:8d}")
        print(f"worst p95 {worst:.1f} ms: {'within' if out['within_goal'] else 'OVER'} "
              f"the {GOAL_MS:.0f} ms goal")
    return 0 if out["within_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
