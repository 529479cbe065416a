"""``/metrics``: the host's and every VM's figures in Prometheus' text format.

A custom collector (prometheus_client's ``Collector`` protocol) reads the figures at scrape
time, so they are never stale and the agent keeps no counters of its own.
"""
from __future__ import annotations

from collections.abc import Iterator

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vnix.node.vms import VmService


class NodeCollector(Collector):
    def __init__(self, vms: VmService) -> None:
        self.vms = vms

    def collect(self) -> Iterator[Metric]:
        mem = psutil.virtual_memory()
        yield GaugeMetricFamily("vnix_host_cpu_percent", "Host CPU use since the last scrape",
                                value=psutil.cpu_percent(interval=None))
        yield GaugeMetricFamily("vnix_host_cpus", "Host logical CPUs",
                                value=psutil.cpu_count() or 0)
        yield GaugeMetricFamily("vnix_host_memory_total_bytes", "Host RAM", value=mem.total)
        yield GaugeMetricFamily("vnix_host_memory_available_bytes", "Host RAM available",
                                value=mem.available)
        up = GaugeMetricFamily("vnix_vm_up", "1 if the VM's process runs", labels=["vm", "state"])
        cpu = CounterMetricFamily("vnix_vm_cpu_seconds", "CPU time of the VM's process",
                                  labels=["vm"])
        memory = GaugeMetricFamily("vnix_vm_memory_bytes", "Configured guest RAM", labels=["vm"])
        balloon = GaugeMetricFamily("vnix_vm_balloon_bytes", "Guest RAM after ballooning",
                                    labels=["vm"])
        rss = GaugeMetricFamily("vnix_vm_rss_bytes", "Host memory of the VM's process",
                                labels=["vm"])
        for info in self.vms.infos():
            up.add_metric([info.name, info.state.value], 1 if info.pid else 0)
            cpu.add_metric([info.name], info.cpu_time_s)
            memory.add_metric([info.name], info.memory_mib * 1024 * 1024)
            if info.balloon_mib is not None:
                balloon.add_metric([info.name], info.balloon_mib * 1024 * 1024)
            if info.rss_mib is not None:
                rss.add_metric([info.name], info.rss_mib * 1024 * 1024)
        yield from (up, cpu, memory, balloon, rss)


def render(vms: VmService) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(vms))
    return generate_latest(registry)
