"""Networks through the agent: bridges, TAPs, dnsmasq, and isolation between networks.

Network namespaces stand in for VMs (a veth end in the namespace, the other end enslaved to the
network's bridge exactly as a VM's TAP is); addresses from 198.18.0.0/15 only.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pyroute2 import IPRoute

from vnix.node.app import create_app

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bridges and namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("dnsmasq") is None,
                       reason="needs iproute2 and dnsmasq"),
]
H = {"Authorization": "Bearer t"}


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 64)
    c = TestClient(create_app(tmp_path / "d", "t", ["fake"], "fake", reconcile=False))
    assert c.post("/images", headers=H, json={"name": "k", "kernel": str(kernel)}).status_code == 201
    made: list[str] = []
    c.namespaces = made  # type: ignore[attr-defined]
    yield c
    for vm in c.get("/vms", headers=H).json():
        c.delete(f"/vms/{vm['name']}", headers=H)
    for net in c.get("/networks", headers=H).json():
        c.delete(f"/networks/{net['name']}", headers=H)
    for ns in made:
        sh("ip", "netns", "del", ns, check=False)


def guest_ns(client: TestClient, bridge: str, address: str) -> str:
    """A namespace plugged into ``bridge`` like a VM's NIC; returns its name."""
    ns = f"vnxt{uuid.uuid4().hex[:6]}"
    client.namespaces.append(ns)  # type: ignore[attr-defined]
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", f"{ns}h", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", f"{ns}h", "master", bridge, "up")
    sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return ns


_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7007))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""
_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(4):
    s.sendto(b"hi", (sys.argv[1], 7007))
    try:
        sys.exit(0 if s.recvfrom(100)[0] == b"hi" else 1)
    except OSError:
        pass
sys.exit(1)
"""


def echo_server(ns: str | None, address: str) -> subprocess.Popen[bytes]:
    """A UDP echo service on ``address`` (in namespace ``ns``, or on the host)."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.Popen([*prefix, sys.executable, "-c", _ECHO, address.split("/")[0]])


def reaches(ns: str, address: str) -> bool:
    """Does a datagram from ``ns`` to ``address`` come back? (no ping binary needed)"""
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", _ASK, address,
              check=False).returncode == 0


def test_networks_connect_their_members_and_isolate_others(client: TestClient) -> None:
    r = client.post("/networks", headers=H, json={"name": "red", "cidr": "198.18.41.0/24"})
    assert r.status_code == 201, r.text
    red = r.json()
    blue = client.post("/networks", headers=H,
                       json={"name": "blue", "cidr": "198.18.42.0/24", "dhcp": False}).json()
    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=red["bridge"]) and ipr.link_lookup(ifname=blue["bridge"])
    assert sh("pgrep", "-f", "--", f"--interface={red['bridge']}", check=False).returncode == 0

    a1 = guest_ns(client, red["bridge"], "198.18.41.11/24")
    a2 = guest_ns(client, red["bridge"], "198.18.41.12/24")
    # a member of blue that even claims an address of red's range: no layer-2 path to it
    b1 = guest_ns(client, blue["bridge"], "198.18.41.13/24")
    servers = [echo_server(a2, "198.18.41.12"), echo_server(b1, "198.18.41.13"),
               echo_server(None, "198.18.41.1")]
    try:
        time.sleep(0.5)
        assert reaches(a1, "198.18.41.12")
        assert reaches(a1, "198.18.41.1")  # the gateway (the bridge itself)
        assert not reaches(a1, "198.18.41.13")
    finally:
        for srv in servers:
            srv.kill()
            srv.wait()

    # VMs get a TAP on their network's bridge and distinct MACs
    macs = set()
    for i in range(3):
        r = client.post("/vms", headers=H, json={"name": f"n{i}", "image": "k", "start": False,
                                                 "nics": [{"network": "red"}]})
        assert r.status_code == 201, r.text
        nic = r.json()["nics"][0]
        macs.add(nic["mac"])
        assert nic["mac"].startswith("52:54:00:")
        with IPRoute() as ipr:
            tap = ipr.link_lookup(ifname=nic["tap"])[0]
            assert ipr.get_links(tap)[0].get("master") == ipr.link_lookup(ifname=red["bridge"])[0]
    assert len(macs) == 3
    r = client.post("/vms", headers=H, json={"name": "s", "image": "k", "start": False,
                                             "nics": [{"network": "blue", "ip": "198.18.99.5"}]})
    assert r.status_code == 400 and "not in network 'blue'" in r.json()["error"]

    r = client.delete("/networks/red", headers=H)
    assert r.status_code == 409 and "in use by VM(s) n0, n1, n2" in r.json()["error"]
    r = client.post("/networks", headers=H, json={"name": "green", "cidr": "198.18.41.128/25"})
    assert r.status_code == 409 and "overlaps network 'red'" in r.json()["error"]
    taps = [client.get(f"/vms/n{i}", headers=H).json()["nics"][0]["tap"] for i in range(3)]
    for i in range(3):
        client.delete(f"/vms/n{i}", headers=H)
    assert client.delete("/networks/red", headers=H).status_code == 204
    with IPRoute() as ipr:
        assert not ipr.link_lookup(ifname=red["bridge"])
        assert not any(ipr.link_lookup(ifname=t) for t in taps)
