"""A golden snapshot of the ``clone_identity`` test-kit guest, for the clone tests and
``benchmarks/clones.py``: the guest booted on the native VMM with a qcow2 disk, vsock and
optionally a NIC on a tap, snapshotted (full, not resumed) asleep in its wait for an identity,
and its VMM killed. What a node agent's golden snapshot is, with a guest that boots here.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from vnix.testkit.errors import TestkitError
from vnix.testkit.runner import TESTKIT_DIR, build

IDENTITY_GUEST = TESTKIT_DIR / "build" / "clone_identity.elf"
IDENTITY_PORT = 5000  # the guest's default ``listen=`` port


def identity_snapshot(tmp: Path, *, mib: int = 32, tap: str | None = None, mac: str | None = None,
                      timeout: float = 30.0) -> tuple[Path, Path]:
    """Boot, snapshot and stop the guest in ``tmp``: returns (``base.snap``, its disk
    ``base.qcow2``). ``tap``: a NIC on that tap (and ``mac``); the VMM's vsock socket is
    ``tmp/base.vsock`` (left behind by the kill)."""
    from vnix.vmm.api.client import VmmClient
    from vnix.vmm.launch import vmm_argv

    if not IDENTITY_GUEST.is_file():
        build()
    disk = tmp / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    log, api, snap = tmp / "base.log", tmp / "base.api", tmp / "base.snap"
    argv = ["--kernel", str(IDENTITY_GUEST), "--memory", f"{mib}M", "--disk", f"{disk},format=qcow2",
            "--vsock", f"cid=3,uds={tmp / 'base.vsock'}", "--api-sock", str(api)]
    if tap is not None:
        argv += ["--net", f"tap,name={tap}" + (f",mac={mac}" if mac else "")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(vmm_argv(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while f"waiting for identity on port {IDENTITY_PORT}".encode() not in log.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TestkitError(f"the clone_identity guest did not start: {log.read_text(errors='replace')[-400:]}")
            time.sleep(0.02)
        time.sleep(0.3)  # into its hlt
        VmmClient(str(api)).snapshot(str(snap), resume=False)
    finally:
        proc.kill()
        proc.wait()
    return snap, disk
