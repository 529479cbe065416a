"""``/metrics`` on the manager: every host's and VM's newest sample in Prometheus' text
format — the same stored figures the dashboard's graphs draw (gauges as they are; counters,
which the graphs draw as rates, as ``_total`` counters for Prometheus' ``rate()``), plus the
hosts' and VMs' states and the jobs by state. Read at scrape time from the store.
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from vnix.cluster import metrics
from vnix.cluster.store import Store
from vnix.cluster.tables import Host, Job, Vm

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prom_name(kind: str, metric: str) -> str:
    fig = metrics.figure(metric)
    base = f"vnix_{kind}_{metric}"
    return base.removesuffix("_total") if fig.counter else base


class StoreCollector(Collector):
    def __init__(self, store: Store, interval_s: float = 5.0) -> None:
        self.store = store
        # a series counts if sampled within a few polls of the newest sample (a host whose
        # agent stopped answering has no current figures; vnix_host_up says it is down)
        self.recent = timedelta(seconds=max(30.0, 3 * interval_s))

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        with self.store.session() as s:
            latest = metrics.latest(s, self.recent)
            hosts = list(s.execute(select(Host.name, Host.state)))
            vms = list(s.execute(select(Vm.name, Vm.host, Vm.actual, Vm.desired)))
            jobs = list(s.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)))
        for kind, name, metric, value in latest:
            fig = metrics.figure(metric)
            key = prom_name(kind, metric)
            fam = families.get(key)
            if fam is None:
                text = (f"{fig.title}: a counter (graphed as {fig.unit})" if fig.counter
                        else f"{fig.title} ({fig.unit})" if fig.unit else fig.title)
                fam = (CounterMetricFamily(key, text, labels=[kind]) if fig.counter
                       else GaugeMetricFamily(key, text, labels=[kind]))
                families[key] = fam
            fam.add_metric([name], value)
        yield from families.values()
        up = GaugeMetricFamily("vnix_host_up", "1 if the host's agent answers", labels=["host"])
        for name, state in hosts:
            up.add_metric([name], 1.0 if state == "up" else 0.0)
        yield up
        state = GaugeMetricFamily("vnix_vm_state", "1 for the VM's actual state",
                                  labels=["vm", "host", "state", "desired"])
        for name, host, actual, desired in vms:
            state.add_metric([name, host or "", actual, desired], 1.0)
        yield state
        by_state = GaugeMetricFamily("vnix_jobs", "Jobs by state", labels=["state"])
        for st, n in jobs:
            by_state.add_metric([st], float(n))
        yield by_state


def render(store: Store, interval_s: float = 5.0) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, interval_s))
    return generate_latest(registry)
