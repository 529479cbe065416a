"""Metric samples in the store: the writer the collector uses, reading and retention.

A sample is (kind ``host``|``vm``, name, metric, ts, value, step). The collector writes raw
samples (step 0) every poll; :func:`maintain` (after each poll) averages them into one row a
minute (``step`` = 60) and applies the retention of each tier; :func:`graph` reads what a
graph of a time window shows (counters as rates); :func:`latest` is what ``/metrics`` shows.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from vnix.cluster.tables import MetricSample, Setting, utcnow
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
            Sample("host", host, "vms", float(info.vms)),
            Sample("host", host, "net_rx_bytes", float(info.net_rx_bytes)),
            Sample("host", host, "net_tx_bytes", float(info.net_tx_bytes))]


def vm_samples(vm: VmOut) -> list[Sample]:
    out = [Sample("vm", vm.name, "cpu_time_s", vm.cpu_time_s),
           Sample("vm", vm.name, "memory_mib", float(vm.memory_mib))]
    if vm.rss_mib is not None:
        out.append(Sample("vm", vm.name, "rss_mib", vm.rss_mib))
    if vm.balloon_mib is not None:
        out.append(Sample("vm", vm.name, "balloon_mib", float(vm.balloon_mib)))
    for metric in ("net_rx_bytes", "net_tx_bytes", "disk_read_bytes", "disk_write_bytes"):
        value = getattr(vm, metric)
        if value is not None:
            out.append(Sample("vm", vm.name, metric, float(value)))
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


# -- retention and downsampling (the dashboard's part) --------------------------------------
# Two tiers: raw samples (step 0, one per poll) for RAW_KEEP, then one average per MINUTE
# for the manager's ``metrics_retention_s`` (a day by default). ``maintain`` runs after each
# poll: it averages every minute that has ended since the last run (its high-water mark is a
# setting) and prunes each tier, so a graph of the last hour reads raw samples and a graph
# of the last day reads minutes plus the raw samples not averaged yet.
MINUTE = 60
RAW_KEEP = timedelta(hours=1)
_DONE_KEY = "metrics_downsampled_{step}"


@dataclass(frozen=True)
class Figure:
    """What a metric is, for graphs and ``/metrics``: counters are graphed as rates."""

    metric: str
    title: str
    unit: str
    counter: bool = False
    scale: float = 1.0  # the rate's factor (cpu seconds per second -> percent)


FIGURES: dict[str, Figure] = {f.metric: f for f in (
    Figure("cpu_percent", "CPU", "%"),
    Figure("memory_used_mib", "Memory used", "MiB"),
    Figure("vms", "VMs", "VMs"),
    Figure("net_rx_bytes", "Network received", "B/s", counter=True),
    Figure("net_tx_bytes", "Network sent", "B/s", counter=True),
    Figure("cpu_time_s", "CPU", "%", counter=True, scale=100.0),
    Figure("memory_mib", "Memory (configured)", "MiB"),
    Figure("rss_mib", "Memory (host RSS)", "MiB"),
    Figure("balloon_mib", "Balloon (guest RAM)", "MiB"),
    Figure("disk_read_bytes", "Disk read (host block I/O)", "B/s", counter=True),
    Figure("disk_write_bytes", "Disk written (host block I/O)", "B/s", counter=True),
)}


def figure(metric: str) -> Figure:
    """The figure of ``metric``; VM exit counters (``exits_<kind>``) are rates of exits."""
    if metric in FIGURES:
        return FIGURES[metric]
    if metric.startswith("exits_"):
        return Figure(metric, f"VM exits: {metric[6:]}", "exits/s", counter=True)
    return Figure(metric, metric.replace("_", " "), "")


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def _floor(ts: datetime, step: int) -> datetime:
    epoch = int(_utc(ts).timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, timezone.utc)


def downsample(s: Session, step: int = MINUTE, now: datetime | None = None) -> int:
    """Average the raw samples of every ``step``-second bucket that has ended since the last
    call into one row of that step; returns how many rows were written."""
    end = _floor(now or utcnow(), step)
    key = _DONE_KEY.format(step=step)
    done = s.get(Setting, key)
    if done is not None:
        start = datetime.fromisoformat(done.value)
    else:
        first = s.scalar(select(func.min(MetricSample.ts)).where(MetricSample.step == 0))
        if first is None:
            return 0
        start = _floor(first, step)
    if start >= end:
        return 0
    sums: dict[tuple[str, str, str, int], list[float]] = defaultdict(lambda: [0.0, 0])
    rows = s.execute(select(MetricSample.kind, MetricSample.name, MetricSample.metric,
                            MetricSample.ts, MetricSample.value)
                     .where(MetricSample.step == 0, MetricSample.ts >= start,
                            MetricSample.ts < end))
    for kind, name, metric, ts, value in rows:
        epoch = int(_utc(ts).timestamp())
        acc = sums[(kind, name, metric, epoch - epoch % step)]
        acc[0] += value
        acc[1] += 1
    out = [{"kind": k, "name": n, "metric": m, "step": step, "value": total / count,
            "ts": datetime.fromtimestamp(bucket, timezone.utc)}
           for (k, n, m, bucket), (total, count) in sums.items()]
    if out:
        s.execute(insert(MetricSample), out)
    if done is None:
        s.add(Setting(key=key, value=end.isoformat()))
    else:
        done.value = end.isoformat()
    return len(out)


def maintain(s: Session, retention: timedelta, now: datetime | None = None,
             raw_keep: timedelta = RAW_KEEP) -> int:
    """Downsample the minutes that ended, then prune: raw samples after ``raw_keep`` (never
    longer than ``retention``), minute averages after ``retention``. Cheap when no minute
    has ended since the last call. Returns the rows written."""
    now = now or utcnow()
    written = downsample(s, MINUTE, now)
    if written:
        cut = now - min(raw_keep, retention)
        s.execute(delete(MetricSample).where(MetricSample.step == 0, MetricSample.ts < cut))
        s.execute(delete(MetricSample).where(MetricSample.step == MINUTE,
                                             MetricSample.ts < now - retention))
    return written


def graph(s: Session, kind: str, name: str, metric: str, window: timedelta,
          now: datetime | None = None) -> list[tuple[datetime, float]]:
    """The points a graph of the last ``window`` shows: raw samples when the window fits in
    the raw tier, else minute averages then the raw samples newer than the last average.
    Counters come out as rates (per second, times the figure's scale)."""
    now = now or utcnow()
    since = now - window
    if window <= RAW_KEEP:
        points = series(s, kind, name, metric, since)
    else:
        minutes = series(s, kind, name, metric, since, MINUTE)
        after = _utc(minutes[-1][0]) + timedelta(seconds=MINUTE) if minutes else since
        points = minutes + series(s, kind, name, metric, after)
    fig = figure(metric)
    return rates(points, fig.scale) if fig.counter else [(_utc(t), v) for t, v in points]


def rates(points: list[tuple[datetime, float]], scale: float = 1.0
          ) -> list[tuple[datetime, float]]:
    """Per-second rates between consecutive counter samples (a counter that went back, a
    restarted VM, gives no point)."""
    out = []
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        dt = (_utc(t1) - _utc(t0)).total_seconds()
        if dt > 0 and v1 >= v0:
            out.append((_utc(t1), (v1 - v0) / dt * scale))
    return out


def latest(s: Session, recent: timedelta = timedelta(minutes=5)
           ) -> list[tuple[str, str, str, float]]:
    """The newest raw value of every series sampled within ``recent`` of the newest sample
    (a VM deleted or a host down long ago has no current value): (kind, name, metric, value),
    sorted. Reads only the last minutes (the (step, ts) index)."""
    newest = s.scalar(select(func.max(MetricSample.ts)).where(MetricSample.step == 0))
    if newest is None:
        return []
    q = (select(MetricSample.kind, MetricSample.name, MetricSample.metric, MetricSample.value)
         .where(MetricSample.step == 0, MetricSample.ts >= newest - recent)
         .order_by(MetricSample.ts, MetricSample.id))
    last = {(k, n, m): v for k, n, m, v in s.execute(q)}
    return [(k, n, m, v) for (k, n, m), v in sorted(last.items())]
