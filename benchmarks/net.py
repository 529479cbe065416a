#!/usr/bin/env python3
"""virtio-net benchmark: guest-to-host throughput through a TAP, vnix's native VMM against QEMU
``-M pc`` virtio-net-pci with ``-netdev tap`` (no vhost: there is no /dev/vhost-net here).

The guest is the ``virtio_net`` test-kit guest with ``bench=MIB``: after its report it sends MIB
MiB as 1472-byte UDP datagrams (full 1500-byte IP packets) from ring 3, keeping the tx ring full
and kicking once a batch, polling the used ring (native speed here: the figure measures the
device, not the emulated guest kernel). **UDP, not TCP**: the test-kit guest's stack is ARP,
ICMP and UDP only; a TCP stream would need a TCP implementation in the guest. The key is still
called ``ratio_tcp`` (the issue's name for the guest-to-host stream figure); ``transport`` says
``udp``.

The guest times its sending with rdtsc, from the first frame to the last one returned by the
device (so every frame has been handed to the tap). Throughput is the bytes the host kernel
took from the tap in that time (``host_mbps``: the tap's rx_bytes counter, frames the VMM
wrote). ``socket_mbps`` is what a Python UDP socket on the tap's address managed to read
(bounded by that reader, shown for reference only). Runs alternate between the VMMs for
``--rounds`` each; medians. ``--json`` prints one object with ``ratio_tcp`` (vnix / QEMU
``host_mbps``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import host_tsc_khz  # noqa: E402

from vnix.vmm.devices.virtio.kit import Nic, run  # noqa: E402
from vnix.vmm.devices.virtio.net import probe  # noqa: E402

TAP, HOST, GUEST, PORT = "vnxbench0", "198.19.254.1", "198.19.254.2", 6000


def one_run(vmm: str, mib: int) -> dict[str, float]:
    probe.make_link(TAP, "tap", f"{HOST}/24")
    sink = probe.UdpServer(HOST, PORT + 1, echo=False)
    echo = probe.UdpServer(HOST, PORT, echo=True)
    counter = Path(f"/sys/class/net/{TAP}/statistics/rx_bytes")
    before = int(counter.read_text())
    try:
        r = run(vmm, "virtio_net", nics=(Nic(TAP, "52:54:00:be:0c:01"),), timeout=300,  # type: ignore[arg-type]
                cmdline=f"ip={GUEST} host={HOST} udp={PORT} bench={mib}")
        taken = int(counter.read_text()) - before
        time.sleep(0.3)  # the last datagrams still in the host's queues
    finally:
        sink.close()
        echo.close()
        probe.delete_link(TAP)
    if not r.passed or "bench_cycles" not in r.report.extras:
        raise SystemExit(f"{vmm}: the virtio_net guest failed: {r.output[-800:]} {r.stderr[-500:]}")
    sent = int(r.report.extras["bench_bytes"])
    seconds = int(r.report.extras["bench_cycles"]) / (host_tsc_khz() * 1000)
    span = (sink.last or 0) - (sink.first or 0)
    frames = int(r.report.extras["bench_frames"])
    return {"host_mbps": taken / seconds / 1e6, "guest_mbps": sent / seconds / 1e6,
            "socket_mbps": sink.bytes / span / 1e6 if span > 0 else 0.0,
            "frames_to_tap": taken / (frames * (14 + 20 + 8 + 1472)) if frames else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="MiB the guest sends (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"vnix": [], "qemu": []}
    for i in range(args.rounds):
        for vmm in (("vnix", "qemu") if i % 2 == 0 else ("qemu", "vnix")):
            results[vmm].append(one_run(vmm, args.size))
    out: dict[str, object] = {"transport": "udp", "size_mib": args.size, "rounds": args.rounds, "datagram_bytes": 1472}
    for vmm in ("vnix", "qemu"):
        for key in ("host_mbps", "guest_mbps", "socket_mbps", "frames_to_tap"):
            out[f"{vmm}_{key}"] = round(statistics.median(r[key] for r in results[vmm]), 3)
    out["ratio_tcp"] = round(out["vnix_host_mbps"] / out["qemu_host_mbps"], 3)  # type: ignore[operator]
    out["ratio_guest_send"] = round(out["vnix_guest_mbps"] / out["qemu_guest_mbps"], 3)  # type: ignore[operator]
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:20} {v}")


if __name__ == "__main__":
    main()
