"""`vnix host check` and `vnix image` as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from vnix.images import UnknownImageError
from vnix.images.store import load_image

VNIX = [sys.executable, "-m", "vnix"]


def test_host_check_lines_and_json() -> None:
    text = subprocess.run(VNIX + ["host", "check"], capture_output=True, text=True, timeout=60)
    assert text.returncode in (0, 1)
    statuses = [line.split()[0] for line in text.stdout.splitlines()]
    assert set(statuses) <= {"ok", "warn", "fail", "info"}
    assert any(line.split()[1] == "/dev/kvm" for line in text.stdout.splitlines())
    assert (text.returncode == 1) == ("fail" in statuses)

    js = subprocess.run(VNIX + ["host", "check", "--json"], capture_output=True, text=True, timeout=60)
    data = json.loads(js.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"/dev/kvm", "acceleration", "/dev/net/tun", "qemu-system-x86_64"} <= names
    assert data["recommended_driver"]["driver"] in ("native", "qemu-tcg")
    assert data["recommended_driver"]["reason"]


def test_image_build_is_cached() -> None:
    try:
        image = load_image("tiny")
    except UnknownImageError:
        pytest.skip("the tiny image is not built (make image)")
    start = time.monotonic()
    proc = subprocess.run(VNIX + ["image", "build", "tiny"], capture_output=True, text=True,
                          timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
    assert elapsed < 10
    show = json.loads(subprocess.run(VNIX + ["image", "show", "tiny", "--json"],
                                     capture_output=True, text=True, timeout=60).stdout)
    assert show["inputs_hash"] == image.manifest["inputs_hash"]
    assert image.kernel.stat().st_size > 1_000_000
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"
