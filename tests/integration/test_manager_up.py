"""`vnix up --detach` as a user runs it: two tiny Linux VMs (QEMU TCG) created through the
CLI reach running and a shell, are listed, then deleted; `vnix down` stops it all."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.images import ImageError
from vnix.images.store import image_dir, load_image

pytestmark = [pytest.mark.qemu]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    try:
        load_image("tiny")
    except ImageError:
        pytest.skip("the tiny image is not built (make image)")
    (tmp_path / "home" / "images").mkdir(parents=True)
    (tmp_path / "home" / "images" / "tiny").symlink_to(image_dir("tiny"))
    env = {**os.environ, "VNIX_HOME": str(tmp_path / "home")}
    for key in ("VNIX_URL", "VNIX_TOKEN", "VNIX_ADMIN_PASSWORD"):
        env.pop(key, None)
    yield env
    subprocess.run([sys.executable, "-m", "vnix", "down"], env=env, timeout=60)


def vnix(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "vnix", *args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_two_tiny_vms_through_the_cli_then_down(home: dict[str, str]) -> None:
    port = free_port()
    t0 = time.monotonic()
    out = vnix(home, "up", "--detach", "--listen", f"127.0.0.1:{port}", "--driver", "qemu",
               "--interval", "1")
    up_s = time.monotonic() - t0
    assert f"dashboard  http://127.0.0.1:{port}/" in out
    assert "login      user admin, password " in out  # generated, printed once
    assert "vnix up is running already" in subprocess.run(
        [sys.executable, "-m", "vnix", "up", "--detach", "--listen", f"127.0.0.1:{port}"],
        env=home, capture_output=True, text=True).stderr
    nodes = json.loads(vnix(home, "node", "list", "--json"))
    assert [n["state"] for n in nodes] == ["up"]
    assert [i["name"] for i in json.loads(vnix(home, "image", "list", "--json"))] == ["tiny"]

    t0 = time.monotonic()
    job = json.loads(vnix(home, "vm", "create", "t", "--count", "2", "--memory", "256M",
                          "--json"))
    create_s = time.monotonic() - t0
    assert job["state"] == "succeeded"
    for name in ("t-1", "t-2"):
        console = vnix(home, "vm", "console", name, "--wait-for", "vnix:/#", "--timeout", "90")
        assert "vnix:/#" in console
    shell_s = time.monotonic() - t0
    out = vnix(home, "vm", "console", "t-2", "--send", "echo up-$((6*7))", "--wait-for",
               "up-42", "--timeout", "30")
    assert "up-42" in out
    vms = json.loads(vnix(home, "vm", "list", "--json"))
    assert [(v["name"], v["actual"], v["desired"]) for v in vms] == [
        ("t-1", "running", "running"), ("t-2", "running", "running")]
    vnix(home, "vm", "delete", "t-1", "t-2")
    assert json.loads(vnix(home, "vm", "list", "--json")) == []
    assert "vnix stopped" in vnix(home, "down")
    print(f"\nvnix up {up_s:.1f} s, create 2 VMs {create_s:.1f} s, both at a shell "
          f"{shell_s:.1f} s")
