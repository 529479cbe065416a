#!/usr/bin/env python3
"""virtio-blk benchmark: vnix's native VMM against QEMU ``-M pc`` virtio-blk-pci (aio threads,
the default) on the same raw image contents, with the same test-kit guest under both.

The ``virtio_blk`` guest with ``bench=MIB`` runs, after its report, four passes from ring 3
(native speed on these hosts, so the figure measures the device and not the emulated guest
kernel), polling the used ring; BAR0 and the rings are user-accessible and notifications are
MMIO writes (port I/O from ring 3 #GPs here):

* ``seq_write`` / ``seq_read``: MIB MiB in 128 KiB requests, 16 in flight a batch;
* ``rand_write`` / ``rand_read``: MIB/8 MiB in 4 KiB requests at xorshift-random offsets, 16 a batch.

Each VMM gets its own copy of a ``--size`` MiB raw image filled with data (not a sparse file).
Runs alternate (vnix, QEMU, QEMU, vnix, ...) for ``--rounds`` each; medians are reported.
Cycles are the guest's rdtsc, converted with the host's TSC frequency (no TSC scaling here).
This is a benchmark, not a test: these shared machines are noisy. ``--json`` prints one object
with ``ratio_seq_read``, ``ratio_seq_write``, ``ratio_rand_read``, ``ratio_rand_write``
(vnix / QEMU throughput; above 1 means vnix is faster).
"""
from __future__ import annotations

import argparse
import json
import signal
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import host_tsc_khz  # noqa: E402

from vnix.vmm.devices.virtio.kit import Disk, run  # noqa: E402

PASSES = ("seq_read", "seq_write", "rand_read", "rand_write")
_LINE = re.compile(r"bytes=(\d+) cycles=(\d+) request=(\d+)")


def one_run(vmm: str, image: str, mib: int) -> dict[str, tuple[float, float]]:
    """{pass: (MB/s, IOPS)} from one guest run."""
    r = run(vmm, "virtio_blk", disks=(Disk(image),), cmdline=f"bench={mib}", timeout=300)  # type: ignore[arg-type]
    if not r.passed or r.report.extras.get("bench_errors") != "0":
        raise SystemExit(f"{vmm}: the virtio_blk guest failed: {r.output[-500:]} {r.stderr[-500:]}")
    khz = host_tsc_khz()
    out = {}
    for name in PASSES:
        m = _LINE.search(r.report.extras[f"bench_{name}"])
        assert m, r.report.extras
        nbytes, cycles, req = (int(x) for x in m.groups())
        seconds = cycles / (khz * 1000)
        out[name] = (nbytes / seconds / 1e6, nbytes / req / seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="MiB read and written sequentially (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up (its finally blocks)
    tmp = tempfile.mkdtemp(prefix="vnix-blk-bench-")
    content = os.urandom(1 << 20)
    images = {}
    for vmm in ("vnix", "qemu"):
        images[vmm] = os.path.join(tmp, f"{vmm}.raw")
        with open(images[vmm], "wb") as f:
            for _ in range(args.size):
                f.write(content)
    results: dict[str, list[dict[str, tuple[float, float]]]] = {"vnix": [], "qemu": []}
    for i in range(args.rounds):
        for vmm in (("vnix", "qemu") if i % 2 == 0 else ("qemu", "vnix")):
            results[vmm].append(one_run(vmm, images[vmm], args.size))
    out: dict[str, object] = {"size_mib": args.size, "rounds": args.rounds, "tsc_khz": host_tsc_khz()}
    for name in PASSES:
        for vmm in ("vnix", "qemu"):
            out[f"{vmm}_{name}_mbps"] = round(statistics.median(r[name][0] for r in results[vmm]), 1)
            out[f"{vmm}_{name}_iops"] = round(statistics.median(r[name][1] for r in results[vmm]))
        out[f"ratio_{name}"] = round(out[f"vnix_{name}_mbps"] / out[f"qemu_{name}_mbps"], 3)  # type: ignore[operator]
    for p in images.values():
        os.unlink(p)
    os.rmdir(tmp)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{'pass':12} {'vnix MB/s':>10} {'QEMU MB/s':>10} {'vnix IOPS':>10} {'QEMU IOPS':>10} {'ratio':>6}")
    for name in PASSES:
        print(f"{name:12} {out[f'vnix_{name}_mbps']:>10} {out[f'qemu_{name}_mbps']:>10} "
              f"{out[f'vnix_{name}_iops']:>10} {out[f'qemu_{name}_iops']:>10} {out[f'ratio_{name}']:>6}")


if __name__ == "__main__":
    main()
