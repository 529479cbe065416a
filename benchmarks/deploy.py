#!/usr/bin/env python3
"""Deploy benchmark: a 32-VM virtual cluster from XML on one host, through the manager.

Starts a throwaway manager (SQLite in a temp dir) and a local agent, imports a guest image,
then submits one ``create_cluster`` job for a cluster of ``--count`` VMs and measures:

* ``deploy_s``: job submitted -> every VM created and running;
* ``booted_s`` (with ``--boot``): job submitted -> every guest's console shows its ready text;
* ``vmm_rss_mib``: the VM processes' resident memory summed (and per VM), ``vmm_uss_mib`` /
  ``vmm_pss_mib`` the same by unique / proportional set size (what sharing saves), and
  ``host_used_delta_mib``: the host's used memory after minus before (page cache excluded);
* ``overlay_mib``: disk used by the overlays.

``--source`` picks how (``both``, the default, runs ``image`` then ``snapshot``):

* ``image``: the tiny Linux image on the QEMU driver (TCG on software-nested KVM), each VM
  booted from a fresh qcow2 overlay of the image, ``--parallel`` at a time;
* ``snapshot``: clones (``<group source="snapshot" snapshot="gold">``, native driver) of the
  test kit's idle guest (guests/testkit/build/idle.elf): the agent boots a template VM to its
  first tick, saves it (``golden_s``, counted in ``deploy_s``), and its warm clone server
  forks each clone with RAM MAP_PRIVATE from the snapshot file; ``--boot`` waits for a tick
  printed by every clone. Linux cannot be the snapshot's guest here: the native VMM does not
  boot Linux on these machines' software-nested KVM (../shared/notes/kvm-on-these-machines.md);
* ``image-native``: the same idle guest booted from its image by the native driver (one VMM
  process each), the like-for-like baseline of ``snapshot``.

``--json`` prints one JSON object (``{"image": {...}, "snapshot": {...}}``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil


MODES: dict[str, dict[str, str]] = {
    # image name, driver, group attributes, console text of a ready guest
    "image": {"image": "tiny", "driver": "qemu", "attrs": "", "ready": "vnix-guest: ready"},
    "snapshot": {"image": "idle", "driver": "native",
                 "attrs": ' source="snapshot" snapshot="gold"', "ready": "tick "},
    "image-native": {"image": "idle", "driver": "native", "attrs": "", "ready": "tick "},
}


def cluster_xml(count: int, memory: str, mode: str = "image") -> str:
    m = MODES[mode]
    return f"""<?xml version="1.0"?>
<cluster name="bench">
  <group name="n" count="{count}" image="{m['image']}" cpus="1" memory="{memory}" driver="{m['driver']}"{m['attrs']}/>
</cluster>
"""


def run(count: int, memory: str, parallel: int, boot: bool, boot_timeout: float,
        mode: str = "image") -> dict[str, Any]:
    import uvicorn

    from vnix.cluster.auth import SYSTEM, Actor, Role
    from vnix.cluster.manager import Manager, ManagerConfig
    from vnix.cluster.ops_admin import RegisterHost
    from vnix.cluster.scheduler import Overcommit
    from vnix.cluster.store import Store, sqlite_url
    from vnix.cluster.tables import Vm
    from vnix.cluster.vcluster.ops import CreateCluster, DeleteCluster
    from vnix.cluster.vcluster.testlab import free_port
    from vnix.node import models as agent
    from vnix.node.app import create_app
    from vnix.testkit.runner import TESTKIT_DIR, build

    spec = MODES[mode]
    admin = Actor("admin", Role.ADMIN)
    tmp = Path(tempfile.mkdtemp(prefix="vnx-db-", dir="/tmp"))  # short: unix socket paths
    token = "bench-agent-token"
    port = free_port()
    driver = spec["driver"]
    app = create_app(tmp / "agent", token, [driver], driver, reconcile=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    store = Store(sqlite_url(tmp / "manager.db"))
    m = Manager(store, ManagerConfig(monitor=False, workers=2,
                                     overcommit=Overcommit(cpu_ratio=64, memory_ratio=1.0)))
    m.ensure_admin("bench-admin-password")
    url = f"http://127.0.0.1:{port}"
    if spec["image"] == "tiny":
        m.agent_for("local", url, token).call("import_image", agent.ImportImage(name="tiny", tiny=True))
    else:
        guest = TESTKIT_DIR / "build" / "idle.elf"
        if not guest.is_file():
            build()
        m.agent_for("local", url, token).call("import_image", agent.ImportImage(
            name=spec["image"], kernel=str(guest)))
    m.submit(RegisterHost(name="local", url=url, token=token), SYSTEM)
    m.start()
    result: dict[str, Any] = {"source": mode, "driver": driver, "guest": spec["image"],
                              "count": count, "memory": memory, "parallel": parallel,
                              "host_cpus": os.cpu_count()}
    try:
        mem0 = psutil.virtual_memory()
        t0 = time.monotonic()
        job_id = m.submit(CreateCluster(xml=cluster_xml(count, memory, mode), parallel=parallel),
                          admin)
        job = m.runner.wait(job_id, 1800)
        result["deploy_s"] = round(time.monotonic() - t0, 2)
        if job.state != "succeeded":
            raise SystemExit(f"deploy failed: {job.error}")
        with store.session() as s:
            vms = list(s.query(Vm).filter(Vm.cluster == "bench"))
        result["running"] = sum(1 for v in vms if v.actual == "running")
        client = m.agent("local")
        if mode == "snapshot":
            gold = client.call("snapshot_info", name="gold")
            result["golden_s"] = round(gold.boot_s + gold.save_s, 2)
            result["clones_s"] = round(result["deploy_s"] - result["golden_s"], 2)
            result["snapshot_mib"] = round(gold.size / 2**20, 1)
        if boot:
            pending = {v.name for v in vms}
            deadline = time.monotonic() + boot_timeout
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    lines = client.call("console", params={"lines": 300}, name=name).lines
                    if any(spec["ready"] in ln for ln in lines):
                        pending.discard(name)
                time.sleep(1.0 if mode == "image" else 0.05)
            result["booted_s"] = round(time.monotonic() - t0, 2) if not pending else None
            result["booted"] = len(vms) - len(pending)
        pids = [client.call("vm_info", name=v.name).pid for v in vms]
        rss = uss = pss = 0
        for pid in pids:
            try:
                mi = psutil.Process(pid).memory_full_info() if pid else None
            except psutil.Error:
                mi = None
            if mi is not None:
                rss, uss, pss = rss + mi.rss, uss + mi.uss, pss + mi.pss
        mem1 = psutil.virtual_memory()
        n = max(1, len(pids))
        result["vmm_rss_mib"] = round(rss / 2**20, 1)
        result["vmm_rss_per_vm_mib"] = round(rss / 2**20 / n, 1)
        result["vmm_uss_per_vm_mib"] = round(uss / 2**20 / n, 2)
        result["vmm_pss_per_vm_mib"] = round(pss / 2**20 / n, 2)
        result["host_used_delta_mib"] = round((mem1.used - mem0.used) / 2**20, 1)
        overlays = tmp / "agent" / "overlays"
        result["overlay_mib"] = round(sum(f.stat().st_blocks * 512 for f in overlays.rglob("*")
                                          if f.is_file()) / 2**20, 1)
        t1 = time.monotonic()
        job = m.runner.wait(m.submit(DeleteCluster(name="bench", parallel=parallel), admin), 600)
        result["delete_s"] = round(time.monotonic() - t1, 2)
    finally:
        m.stop()
        store.close()
        server.should_exit = True
        thread.join(10)
        app.state.vms.snapshots.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def report(r: dict[str, Any]) -> None:
    how = {"image": "image-based (tiny Linux, QEMU driver, qcow2 overlays)",
           "snapshot": "snapshot-based (clones of the idle test-kit guest, native driver)",
           "image-native": "image-based (idle test-kit guest, native driver)"}[r["source"]]
    print(f"{r['count']} VMs from XML on one host ({r['host_cpus']} CPUs), {how}:")
    print(f"  all running after      {r['deploy_s']:.2f} s ({r['running']} running)")
    if "golden_s" in r:
        print(f"    of which the golden snapshot {r['golden_s']:.2f} s "
              f"({r['snapshot_mib']} MiB file), the clones {r['clones_s']:.2f} s")
    if "booted_s" in r:
        print(f"  all ready on console   {r['booted_s']} s ({r['booted']} of {r['count']})")
    print(f"  VM processes RSS       {r['vmm_rss_mib']} MiB ({r['vmm_rss_per_vm_mib']} MiB/VM; "
          f"USS {r['vmm_uss_per_vm_mib']}, PSS {r['vmm_pss_per_vm_mib']} MiB/VM)")
    print(f"  host memory used +     {r['host_used_delta_mib']} MiB")
    print(f"  overlays on disk       {r['overlay_mib']} MiB")
    print(f"  delete                 {r['delete_s']:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["both", *MODES], default="both")
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--memory", default=None,
                    help="per VM (default: 128M for the tiny Linux image, 32M for the idle guest)")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--boot", action="store_true", help="also wait for every guest's ready text")
    ap.add_argument("--boot-timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.count <= 256:
        ap.error("--count must be 1..256")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on SIGTERM
    modes = ["image", "snapshot"] if a.source == "both" else [a.source]
    out = {}
    for mode in modes:
        memory = a.memory or ("128M" if MODES[mode]["image"] == "tiny" else "32M")
        out[mode] = run(a.count, memory, a.parallel, a.boot, a.boot_timeout, mode)
        if not a.json:
            report(out[mode])
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
