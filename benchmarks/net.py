#!/usr/bin/env python3
"""virtio-net benchmark: TCP (and UDP) throughput through a TAP between the host and the guest,
vnix's native VMM against QEMU ``-M pc`` virtio-net-pci with ``-netdev tap`` (no vhost: there is
no /dev/vhost-net here), in the same run.

The guest is the ``virtio_net`` test-kit guest; everything after its report runs from ring 3
(native speed here: the figure measures the device, not the emulated guest kernel), polling the
rings and kicking once a round:

1. ``bench=MIB``: MIB MiB as 1472-byte UDP datagrams to the host, the tx ring kept full.
   ``udp_mbps`` is what the host kernel took from the tap (its rx_bytes counter) over the
   guest's own rdtsc-timed sending span.
2. ``tcp_bench=MIB``: the guest's TCP (guests/testkit/lib/tcp.c: no window scaling, so at most
   64 KiB in flight; MSS 1460; ACKs once a polling round) serves port 19 (a source: MIB MiB of
   the pattern k % 251, then FIN) and port 9 (discard: checks the pattern). The host, a Python
   socket, connects to 19 and reads to EOF, checking every byte (``tcp_g2h_mbps``: guest to
   host, connect to EOF), then connects to 9, sends MIB MiB, half-closes and waits for the
   guest's FIN (``tcp_h2g_mbps``: host to guest).

Runs alternate between the VMMs for ``--rounds`` each; medians. ``--json`` prints one object:
``ratio_tcp`` (vnix / QEMU guest-to-host TCP, the issue's figure), ``ratio_tcp_h2g``,
``ratio_udp`` and each VMM's figures.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import host_tsc_khz  # noqa: E402

from vnix.vmm.devices.virtio.kit import Nic, run_interactive  # noqa: E402
from vnix.vmm.devices.virtio.net import probe  # noqa: E402

TAP, HOST, GUEST, PORT = "vnxbench0", "198.19.254.1", "198.19.254.2", 6000
CHUNK = 1 << 16
PATTERN = probe.pattern(0, CHUNK + 251)


def tcp_from_guest(total: int) -> tuple[float, int, bool]:
    """Read the guest's source (port 19) to EOF: (seconds, bytes, pattern intact)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got, intact = 0, True
    with probe.connect_retry(GUEST, 19, timeout=30) as s:
        s.settimeout(60)
        start = time.monotonic()
        while n := s.recv_into(buf):
            off = got % 251
            intact = intact and view[:n] == PATTERN[off : off + n]
            got += n
        seconds = time.monotonic() - start
    return seconds, got, intact and got == total


def tcp_to_guest(total: int) -> tuple[float, bool]:
    """Send ``total`` bytes of the pattern to the guest's discard port (9), half-close, wait
    for its FIN: (seconds, the guest closed cleanly)."""
    with probe.connect_retry(GUEST, 9, timeout=30) as s:
        s.settimeout(60)
        start = time.monotonic()
        sent = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            off = sent % 251
            s.sendall(PATTERN[off : off + n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        eof = s.recv(1) == b""
        seconds = time.monotonic() - start
    return seconds, eof


def one_run(vmm: str, udp_mib: int, tcp_mib: int) -> dict[str, float]:
    probe.make_link(TAP, "tap", f"{HOST}/24")
    sink = probe.UdpServer(HOST, PORT + 1, echo=False)
    echo = probe.UdpServer(HOST, PORT, echo=True)
    counter = Path(f"/sys/class/net/{TAP}/statistics/rx_bytes")
    state: dict[str, object] = {}

    def on_line(line: str, proc: subprocess.Popen[bytes]) -> None:
        if line == "tcp_bench: listening":
            state["udp_taken"] = int(counter.read_text()) - int(state["before"])  # type: ignore[call-overload]
            state["g2h"] = tcp_from_guest(tcp_mib << 20)
            state["h2g"] = tcp_to_guest(tcp_mib << 20)

    state["before"] = int(counter.read_text())
    try:
        r = run_interactive(vmm, "virtio_net", on_line, nics=(Nic(TAP, "52:54:00:be:0c:01"),),  # type: ignore[arg-type]
                            timeout=600, cmdline=f"ip={GUEST} host={HOST} udp={PORT} bench={udp_mib} tcp_bench={tcp_mib}")
    finally:
        sink.close()
        echo.close()
        probe.delete_link(TAP)
    x = r.report.extras
    if not r.passed or "bench_cycles" not in x or "g2h" not in state or x.get("tcp_discard_data_ok") != "yes":
        raise SystemExit(f"{vmm}: the virtio_net guest failed: {r.output[-1500:]} {r.stderr[-500:]}")
    g2h_s, g2h_bytes, g2h_ok = state["g2h"]  # type: ignore[misc]
    h2g_s, h2g_eof = state["h2g"]  # type: ignore[misc]
    if not g2h_ok or not h2g_eof or x.get("tcp_source_clean") != "yes" or x.get("tcp_discard_clean") != "yes":
        raise SystemExit(f"{vmm}: a TCP stream did not arrive whole or close cleanly: {state} {r.output[-800:]}")
    udp_s = int(x["bench_cycles"]) / (host_tsc_khz() * 1000)
    return {"tcp_g2h_mbps": g2h_bytes / g2h_s / 1e6, "tcp_h2g_mbps": (tcp_mib << 20) / h2g_s / 1e6,
            "udp_mbps": int(state["udp_taken"]) / udp_s / 1e6,  # type: ignore[call-overload]
            "tcp_retransmits": float(x.get("tcp_retransmits", 0)), "tcp_dup_acks": float(x.get("tcp_dup_acks", 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="MiB each TCP stream carries (default 64)")
    ap.add_argument("--udp-size", type=int, default=64, help="MiB of UDP (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still cleans up (its finally blocks)
    results: dict[str, list[dict[str, float]]] = {"vnix": [], "qemu": []}
    for i in range(args.rounds):
        for vmm in (("vnix", "qemu") if i % 2 == 0 else ("qemu", "vnix")):
            results[vmm].append(one_run(vmm, args.udp_size, args.size))
    out: dict[str, object] = {"tcp_mib": args.size, "udp_mib": args.udp_size, "rounds": args.rounds}
    for vmm in ("vnix", "qemu"):
        for key in ("tcp_g2h_mbps", "tcp_h2g_mbps", "udp_mbps", "tcp_retransmits", "tcp_dup_acks"):
            out[f"{vmm}_{key}"] = round(statistics.median(r[key] for r in results[vmm]), 3)
    out["ratio_tcp"] = round(out["vnix_tcp_g2h_mbps"] / out["qemu_tcp_g2h_mbps"], 3)  # type: ignore[operator]
    out["ratio_tcp_h2g"] = round(out["vnix_tcp_h2g_mbps"] / out["qemu_tcp_h2g_mbps"], 3)  # type: ignore[operator]
    out["ratio_udp"] = round(out["vnix_udp_mbps"] / out["qemu_udp_mbps"], 3)  # type: ignore[operator]
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
