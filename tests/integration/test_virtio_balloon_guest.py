"""The virtio_balloon test-kit guest under vnix and under QEMU (-M pc, virtio-balloon-pci with
free-page-reporting): same report; the VMM process's resident memory drops by the ballooned
amount after inflating and again after free page reporting (measured from outside, as a user
would, with psutil)."""
from __future__ import annotations

import os
import shutil
import subprocess

import psutil
import pytest

from vnix.vmm.devices.virtio.kit import KitRun, run_interactive

pytestmark = [
    pytest.mark.kvm, pytest.mark.qemu,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
]

TARGET_MIB = 16  # the guest touches this much, then balloons it; then reports 16 MiB free


def balloon_run(vmm: str) -> tuple[KitRun, dict[str, int]]:
    rss: dict[str, int] = {}

    def on_line(line: str, proc: subprocess.Popen[bytes]) -> None:
        if line.startswith("balloon_phase: "):
            rss[line.split(": ", 1)[1]] = psutil.Process(proc.pid).memory_info().rss
            assert proc.stdin is not None
            proc.stdin.write(b"g")  # the guest waits for one byte before the next step
            proc.stdin.flush()

    r = run_interactive(vmm, "virtio_balloon", on_line, balloon_mib=TARGET_MIB, memory_mib=128, timeout=90)
    return r, rss


def test_balloon_gives_memory_back_like_qemu() -> None:
    q, q_rss = balloon_run("qemu")
    v, v_rss = balloon_run("vnix")
    assert q.passed, q.output + q.stderr
    assert v.passed, v.output + v.stderr
    assert v.report.lines == q.report.lines
    for rss in (v_rss, q_rss):
        mib = {k: n >> 20 for k, n in rss.items()}
        assert rss["touched"] - rss["inflated"] >= (TARGET_MIB - 2) << 20, mib
        assert rss["touched_free"] - rss["reported"] >= (16 - 2) << 20, mib
