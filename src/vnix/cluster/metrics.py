"""Metric samples in the store: the writer the collector uses, reading and retention.

A sample is (kind ``host``|``vm``, name, metric, ts, value, step). The collector writes raw
samples (step 0) every poll; :func:`prune` drops raw samples older than the retention.
Downsampling into coarser steps (and serving graphs) is the dashboard's part (issue 7): it
writes rows with ``step`` = the bucket width in seconds into the same table.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from vnix.cluster.tables import MetricSample, utcnow
from vnix.node.models import HostOut, VmOut


@dataclass(frozen=True)
class Sample:
    kind: str  # host | vm
    name: str
    metric: str
    value: float


def host_samples(host: str, info: HostOut) -> list[Sample]:
    used = info.memory_total_mib - info.memory_available_mib
    return [Sample("host", host, "cpu_percent", info.cpu_percent),
            Sample("host", host, "memory_used_mib", float(used)),
            Sample("host", host, "vms", float(info.vms))]


def vm_samples(vm: VmOut) -> list[Sample]:
    out = [Sample("vm", vm.name, "cpu_time_s", vm.cpu_time_s),
           Sample("vm", vm.name, "memory_mib", float(vm.memory_mib))]
    if vm.rss_mib is not None:
        out.append(Sample("vm", vm.name, "rss_mib", vm.rss_mib))
    if vm.balloon_mib is not None:
        out.append(Sample("vm", vm.name, "balloon_mib", float(vm.balloon_mib)))
    for key, count in (vm.exit_counters or {}).items():
        out.append(Sample("vm", vm.name, f"exits_{key}"[:32], float(count)))
    return out


def write(s: Session, samples: Iterable[Sample], ts: datetime | None = None,
          step: int = 0) -> int:
    rows = [{"kind": x.kind, "name": x.name, "metric": x.metric, "value": x.value,
             "ts": ts or utcnow(), "step": step} for x in samples]
    if rows:
        s.execute(insert(MetricSample), rows)
    return len(rows)


def series(s: Session, kind: str, name: str, metric: str, since: datetime | None = None,
           step: int = 0) -> list[tuple[datetime, float]]:
    q = select(MetricSample.ts, MetricSample.value).where(
        MetricSample.kind == kind, MetricSample.name == name, MetricSample.metric == metric,
        MetricSample.step == step)
    if since is not None:
        q = q.where(MetricSample.ts >= since)
    return [(ts, v) for ts, v in s.execute(q.order_by(MetricSample.ts))]


def prune(s: Session, retention: timedelta, step: int = 0) -> int:
    """Delete samples of ``step`` older than ``retention``; returns how many went."""
    r = s.execute(delete(MetricSample).where(MetricSample.step == step,
                                             MetricSample.ts < utcnow() - retention))
    return int(r.rowcount or 0)
