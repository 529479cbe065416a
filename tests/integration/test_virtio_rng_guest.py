"""The virtio_rng test-kit guest: entropy through virtio-pci, same report as QEMU's virtio-rng-pci."""
from __future__ import annotations

import os
import shutil

import pytest

from vnix.vmm.devices.virtio.kit import run

pytestmark = [
    pytest.mark.kvm, pytest.mark.qemu,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
]


def test_rng_gives_bytes_like_qemu() -> None:
    v = run("vnix", "virtio_rng")
    q = run("qemu", "virtio_rng")
    assert q.passed, q.output + q.stderr
    assert v.passed, v.output + v.stderr
    assert v.report.lines == q.report.lines
    assert v.report.facts["bytes_vary"] == "yes"
