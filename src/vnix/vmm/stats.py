"""What the VMM process measures: exits by reason (and by port / address), start-up timings, RSS.

Timings are milliseconds since the VMM's ``main`` started (``t0``); ``python_startup_ms`` is the
interpreter's own start-up before that, from ``/proc/self/stat`` (10 ms resolution). The marks:

* ``vm_created``        KVM VM, memory, devices and vCPUs ready, kernel loaded
* ``first_kvm_run``     the boot vCPU enters KVM_RUN for the first time (its first instruction)
* ``first_serial_byte`` the guest's first byte on the serial port
* ``exit``              the VM stopped

Each vCPU thread counts into its own :class:`ExitCounters` (no lock in the hot loop); the report
adds them up. Written as JSON with ``--stats-json PATH``, printed on stderr with ``--stats``.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter


class ExitCounters:
    """One vCPU's exit counts. Port-I/O exits are counted only per port (the hot loop does one
    counter update an exit); :meth:`reasons` adds them up under ``io_out`` / ``io_in``."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()
        self.io_out: Counter[int] = Counter()
        self.io_in: Counter[int] = Counter()
        self.mmio: Counter[int] = Counter()

    def reasons(self) -> Counter[str]:
        """Exits by reason, port I/O included."""
        total = Counter(self.by_reason)
        for name, ports in (("io_out", self.io_out), ("io_in", self.io_in)):
            n = sum(ports.values())
            if n:
                total[name] += n
        return total


def _python_startup_ms() -> float | None:
    """How long the interpreter ran before now, from the process start time in /proc/self/stat."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 (starttime), counted after "pid (comm)"
        boot_now = time.clock_gettime(time.CLOCK_BOOTTIME)
        return max(0.0, (boot_now - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes() -> int:
    """Resident set size now (VmRSS from /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Stats:
    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.started_at = time.time() - (time.monotonic() - self.t0)
        self.python_startup_ms = _python_startup_ms()
        self.marks: dict[str, float] = {}
        self.vcpus: list[ExitCounters] = []
        self.unassigned: dict[str, dict[int, int]] = {}
        self.guest_ram_bytes = 0
        self.guest_resident_bytes = 0
        self.rss_at_exit = 0
        self.exit_status: int | None = None
        self.exit_reason = ""
        self.serial_bytes = 0

    def mark(self, name: str) -> None:
        """Record the first time ``name`` happens."""
        if name not in self.marks:
            self.marks[name] = (time.monotonic() - self.t0) * 1000

    def counters_for_vcpu(self) -> ExitCounters:
        counters = ExitCounters()
        self.vcpus.append(counters)
        return counters

    def totals(self) -> ExitCounters:
        total = ExitCounters()
        for c in self.vcpus:
            total.by_reason.update(c.reasons())
            total.io_out.update(c.io_out)
            total.io_in.update(c.io_in)
            total.mmio.update(c.mmio)
        return total

    def finish(self, status: int, reason: str) -> None:
        self.mark("exit")
        self.exit_status = status
        self.exit_reason = reason
        self.rss_at_exit = rss_bytes()

    def to_dict(self) -> dict[str, object]:
        total = self.totals()
        return {
            "exit_status": self.exit_status,
            "exit_reason": self.exit_reason,
            "started_at_unix": self.started_at,
            "t0_monotonic": self.t0,  # CLOCK_MONOTONIC is system-wide: a parent can subtract its own
            "python_startup_ms": self.python_startup_ms,
            "timings_ms": dict(self.marks),
            "exits": dict(total.by_reason),
            "exits_total": sum(total.by_reason.values()),
            "io_out_by_port": {f"{p:#x}": n for p, n in sorted(total.io_out.items())},
            "io_in_by_port": {f"{p:#x}": n for p, n in sorted(total.io_in.items())},
            "mmio_by_addr": {f"{a:#x}": n for a, n in sorted(total.mmio.items())},
            "exits_by_vcpu": [dict(c.reasons()) for c in self.vcpus],
            "unassigned": {
                bus: {f"{a:#x}": n for a, n in sorted(counts.items())} for bus, counts in self.unassigned.items()
            },
            "serial_bytes": self.serial_bytes,
            "rss_at_exit_bytes": self.rss_at_exit,
            "guest_ram_bytes": self.guest_ram_bytes,
            "guest_resident_bytes": self.guest_resident_bytes,
            "vmm_overhead_bytes": max(0, self.rss_at_exit - self.guest_resident_bytes),
        }

    def write_json(self, path: str) -> None:
        import json  # at the end only: json costs the VMM's start-up ~1 ms

        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    def print(self, file: object = None) -> None:
        out = file or sys.stderr
        d = self.to_dict()
        lines = [f"vnix-vmm: exit status {d['exit_status']} ({d['exit_reason']})"]
        lines.append("  timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in self.marks.items()))
        lines.append(f"  exits: {d['exits_total']} " + ", ".join(f"{k} {v}" for k, v in sorted(d['exits'].items())))  # type: ignore[union-attr]
        lines.append(
            f"  rss at exit {self.rss_at_exit / 2**20:.1f} MiB, guest resident "
            f"{self.guest_resident_bytes / 2**20:.1f} MiB, VMM overhead {d['vmm_overhead_bytes'] / 2**20:.1f} MiB"  # type: ignore[operator]
        )
        print("\n".join(lines), file=out)  # type: ignore[call-overload]
