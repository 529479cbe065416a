"""Diff snapshots hold exactly the pages that changed: the ``snapshot_dirty`` guest writes a known
set of pages on each command and has virtio-blk DMA into a page only the VMM writes; a diff
snapshot after each command must hold those pages, the guest's own fixed bookkeeping (stack,
tick counter: measured by a command that writes no page of the set), and the pages the VMM
wrote, which the snapshot lists (``vmm_pages``) — nothing else, nothing less.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from vnix.testkit.runner import TESTKIT_DIR, build
from vnix.vmm.launch import vmm_argv
from vnix.vmm.snapshot import load_snapshot

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]

GUEST = TESTKIT_DIR / "build" / "snapshot_dirty.elf"


@pytest.fixture(scope="module", autouse=True)
def guest() -> None:
    if not GUEST.is_file():
        build()


def test_diff_snapshots_hold_exactly_the_pages_written(tmp_path: Path) -> None:
    import httpx

    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\x5a" * (1 << 20))
    sock = str(tmp_path / "api.sock")
    proc = subprocess.Popen(vmm_argv(["--kernel", str(GUEST), "--memory", "64M", "--debug-exit", "--disk", str(disk),
                                      "--api-sock", sock]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    os.set_blocking(proc.stdout.fileno(), False)
    out = b""

    def wait_for(text: bytes, times: int = 1) -> None:
        nonlocal out
        deadline = time.monotonic() + 60
        while out.count(text) < times:
            assert time.monotonic() < deadline and proc.poll() is None, out[-400:]
            try:
                out += proc.stdout.read() or b""  # type: ignore[union-attr]
            except BlockingIOError:
                pass
            time.sleep(0.01)

    client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://vmm", timeout=60)

    def snapshot(name: str, memory: str) -> dict:
        r = client.put("/snapshot", json={"path": str(tmp_path / name), "memory": memory})
        assert r.status_code == 200, r.text
        return r.json()["info"]

    try:
        wait_for(b"waiting\n")
        snapshot("full.snap", "full")
        results = {}
        for step, n in enumerate((0, 0, 1, 2, 3)):  # the first command warms up (one-time writes)
            line = f"done {n}\n".encode()
            seen = out.count(line)
            proc.stdin.write(str(n).encode())
            proc.stdin.flush()
            wait_for(line, seen + 1)  # the whole line, not a read that ends inside it
            assert out.count(b"done ") == step + 1 and out.endswith(line), out[-200:]
            info = snapshot(f"d{step}.snap", "diff")
            text = out.decode()
            text = text[text.rfind("wrote "):]  # this command's lines
            wrote = re.search(rf"wrote {n}:([ 0-9a-f]*)\n", text)
            dma = re.findall(r"dma: ([0-9a-f]+)\n", text)[-1]
            assert wrote is not None
            snap = load_snapshot(str(tmp_path / f"d{step}.snap"))
            stored = set(snap.stored_pages())
            snap.close()
            results[step] = (stored, {int(a, 16) // 4096 for a in wrote.group(1).split()}, int(dma, 16) // 4096,
                          set(info["vmm_pages"]), info)
        proc.stdin.write(b"q")
        proc.stdin.flush()
        assert proc.wait(30) == 1, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        client.close()

    base_stored, none, dma0, vmm0, info0 = results[1]
    assert none == set()
    assert dma0 in vmm0 and vmm0 <= base_stored  # the page the device wrote is listed and stored
    assert len(base_stored) < 32, sorted(base_stored)  # bookkeeping only: stack, counters, rings
    for step in (2, 3, 4):
        stored, written, dma, vmm, info = results[step]
        assert len(written) == 4
        assert dma in vmm and vmm <= stored
        # exactly: the pages written, plus the same bookkeeping as the command that wrote none
        assert stored == written | base_stored, (sorted(stored - written - base_stored), sorted(written - stored))
        assert info["pages"] == len(stored)
        assert info["guest_pages"] >= len(written)
    print(f"bookkeeping pages {len(base_stored)}, VMM-written {sorted(vmm0)}, DMA page {dma0}")
