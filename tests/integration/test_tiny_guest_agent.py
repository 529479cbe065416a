"""The tiny Linux guest through `vnix agent` (QEMU TCG): its /init configures eth0 from the
kernel parameters the agent adds (``vnix.ip=`` on a static network, ``vnix.dhcp=1`` on one with
dnsmasq), and a stop without force presses the ACPI power button, which the guest's acpid
turns into a clean poweroff.

Slow-ish: two guests boot under TCG (about 15 s on a 2-core machine).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vnix.images.guest_init import ADDRESS_PREFIX, READY_PREFIX

TINY = Path(os.environ.get("VNIX_HOME", Path.home() / ".local/share/vnix")) / "images" / "tiny"
pytestmark = [
    pytest.mark.qemu, pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bridges and TAPs"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq"),
    pytest.mark.skipif(not TINY.exists(), reason="needs the tiny image (vnix image build tiny)"),
]
TOKEN = "tiny-guest-token"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[httpx.Client]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "d"
    err = open(tmp_path / "agent.err", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "vnix", "agent", "--listen", f"127.0.0.1:{port}", "--token",
         TOKEN, "--data-dir", str(data), "--driver", "qemu"],
        stdout=subprocess.DEVNULL, stderr=err)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                        headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get("/host").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "agent.err").read_text()
            time.sleep(0.1)
        r = http.post("/images", json={"name": "tiny", "tiny": True})
        assert r.status_code == 201, r.text
        yield http
    finally:
        try:
            for vm in http.get("/vms").json():
                http.delete(f"/vms/{vm['name']}")
            for net in http.get("/networks").json():
                http.delete(f"/networks/{net['name']}")
        except httpx.HTTPError:
            pass
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        for pidfile in (data / "run" / "qemu").glob("*/pid"):  # never leave a QEMU behind
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        err.close()
        http.close()


def console_until(http: httpx.Client, vm: str, text: str, timeout: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = http.get(f"/vms/{vm}/console", params={"lines": 200}).json()["lines"]
        if any(text in ln for ln in lines):
            return lines
        time.sleep(0.5)
    raise AssertionError(f"{vm}: {text!r} not on the console: {lines[-15:]}")


def run_on(http: httpx.Client, vm: str, command: str, marker: str) -> list[str]:
    """Type ``command`` on the console; the lines after it, up to ``<marker>=<status>``."""
    http.post(f"/vms/{vm}/console", json={"text": f"{command}; echo {marker[:2]}''{marker[2:]}=$?\n"})
    lines = console_until(http, vm, f"{marker}=", 60)
    return lines[:next(i for i, ln in enumerate(lines) if ln.startswith(f"{marker}=")) + 1]


def test_static_and_dhcp_addresses_and_a_graceful_stop(agent: httpx.Client) -> None:
    for name, cidr, dhcp in (("st", "198.18.71.0/24", False), ("dh", "198.18.72.0/24", True)):
        r = agent.post("/networks", json={"name": name, "cidr": cidr, "dhcp": dhcp})
        assert r.status_code == 201, r.text
    common = {"image": "tiny", "memory": "128M", "accel": "tcg"}
    r = agent.post("/vms", json={**common, "name": "gst",
                                 "nics": [{"network": "st", "ip": "198.18.71.20/24"}]})
    assert r.status_code == 201, r.text
    r = agent.post("/vms", json={**common, "name": "gdh", "nics": [{"network": "dh"}]})
    assert r.status_code == 201, r.text

    lines = console_until(agent, "gst", READY_PREFIX)
    assert f"{ADDRESS_PREFIX}198.18.71.20/24" in lines, lines[-10:]
    lines = console_until(agent, "gdh", READY_PREFIX)
    got = [ln.removeprefix(ADDRESS_PREFIX) for ln in lines if ln.startswith(ADDRESS_PREFIX)]
    assert got and got[0].startswith("198.18.72.") and got[0].endswith("/24"), lines[-10:]

    # from inside the guests: the address and route are there, the gateway (the host's bridge)
    # answers, and the DHCP lease also set the default route
    out = run_on(agent, "gst", "ip -4 -o addr show dev eth0; ip route; ping -c 1 -W 3 198.18.71.1",
                 "STATIC")
    assert out[-1] == "STATIC=0", out[-10:]
    assert any("inet 198.18.71.20/24" in ln for ln in out)
    assert any(ln.startswith("default via 198.18.71.1") for ln in out), out[-10:]
    out = run_on(agent, "gdh", "ip route; ping -c 1 -W 3 198.18.72.1", "DHCP")
    assert out[-1] == "DHCP=0", out[-10:]
    assert any(ln.startswith("default via 198.18.72.1") for ln in out), out[-10:]

    # a stop without force: QEMU's system_powerdown -> acpid -> poweroff
    t0 = time.monotonic()
    r = agent.post("/vms/gst/stop", json={"timeout": 60, "force_after": False})
    assert r.status_code == 200, r.text
    vm = r.json()
    assert vm["state"] == "stopped" and vm["detail"] == "the guest powered off", vm
    print(f"\ngraceful stop: {time.monotonic() - t0:.1f} s")
    assert any("power button: powering off" in ln
               for ln in agent.get("/vms/gst/console").json()["lines"])
