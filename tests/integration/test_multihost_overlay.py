"""VXLAN overlays between agents on different hosts (network namespaces as hosts).

Two agents, each in its own namespace on one underlay bridge; the same network on both is
joined with a VXLAN port (PUT /networks/{name}/overlay). Namespaces plugged into each host's
bridge stand in for VMs: they reach each other across hosts only through the overlay, and only
on the same VNI.
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

import httpx
import pytest

from vnix.cluster.vcluster.testlab import HostLab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bridges and namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("busybox") is None,
                       reason="needs iproute2 and busybox"),
]
TOKEN = "overlay-test"
H = {"Authorization": f"Bearer {TOKEN}"}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Agents:
    def __init__(self, lab: HostLab, tmp: Path) -> None:
        self.lab = lab
        self.urls = []
        for h in lab.hosts:
            url = f"http://{h.address}:8470"
            lab.spawn(h.index, [sys.executable, "-m", "vnix", "agent", "--listen",
                                f"{h.address}:8470", "--token", TOKEN, "--data-dir",
                                str(tmp / f"agent{h.index}"), "--driver", "fake"],
                      log_file=tmp / f"agent{h.index}.log")
            self.urls.append(url)
        deadline = time.monotonic() + 60
        for url in self.urls:
            while True:
                try:
                    if httpx.get(f"{url}/host", headers=H, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"agent at {url} did not start: "
                                         + (tmp / "agent0.log").read_text()[-2000:])
                time.sleep(0.3)
        self.guests: list[str] = []

    def call(self, i: int, method: str, path: str, **kw: object) -> httpx.Response:
        return httpx.request(method, self.urls[i] + path, headers=H, timeout=30, **kw)  # type: ignore[arg-type]

    def guest(self, i: int, bridge: str, address: str) -> str:
        """A namespace plugged into host i's ``bridge`` like a VM's NIC."""
        g = f"vnxg{uuid.uuid4().hex[:6]}"
        self.guests.append(g)
        sh("ip", "netns", "add", g)
        sh("ip", "-n", self.lab.hosts[i].ns, "link", "add", f"{g}h", "type", "veth", "peer",
           "name", "eth0", "netns", g)
        sh("ip", "-n", self.lab.hosts[i].ns, "link", "set", f"{g}h", "master", bridge, "up")
        sh("ip", "-n", g, "addr", "add", address, "dev", "eth0")
        sh("ip", "-n", g, "link", "set", "eth0", "up")
        return g


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    with HostLab(2, subnet="198.19.201") as lab:
        a = Agents(lab, tmp_path)
        try:
            yield a
        finally:
            for g in a.guests:
                sh("ip", "netns", "del", g, check=False)


def ping(ns: str, address: str, count: int = 3) -> bool:
    return sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", str(count), "-W", "1",
              address, check=False).returncode == 0


def test_overlay_joins_a_network_across_hosts(agents: Agents) -> None:
    a, lab = agents, agents.lab
    for i in (0, 1):
        r = a.call(i, "POST", "/networks", json={"name": "ov", "cidr": "198.19.64.0/24",
                                                 "dhcp": False})
        assert r.status_code == 201, r.text
    g0 = a.guest(0, "vnb-ov", "198.19.64.10/24")
    g1 = a.guest(1, "vnb-ov", "198.19.64.11/24")
    assert not ping(g0, "198.19.64.11", 1)  # two bridges, no path yet

    h0, h1 = lab.hosts[0].address, lab.hosts[1].address
    r0 = a.call(0, "PUT", "/networks/ov/overlay", json={"vni": 4242, "local": h0, "peers": [h1]})
    r1 = a.call(1, "PUT", "/networks/ov/overlay", json={"vni": 4242, "local": h1, "peers": [h0]})
    assert r0.status_code == 200 and r1.status_code == 200, (r0.text, r1.text)
    assert r0.json()["device"] == "vnx4242" and r0.json()["peers"] == [h1]
    assert r0.json()["mtu"] == 1500  # 1550 underlay - 50 bytes of VXLAN
    assert ping(g0, "198.19.64.11") and ping(g1, "198.19.64.10")

    # idempotent; the peer list is what the manager says it is
    again = a.call(0, "PUT", "/networks/ov/overlay", json={"vni": 4242, "local": h0,
                                                          "peers": [h1]})
    assert again.status_code == 200 and again.json()["peers"] == [h1]
    assert [o["network"] for o in a.call(0, "GET", "/overlays").json()] == ["ov"]

    # removing the overlay cuts the path and the link
    assert a.call(1, "DELETE", "/networks/ov/overlay").status_code == 204
    assert not ping(g0, "198.19.64.11", 2)
    links = sh("ip", "-n", lab.hosts[1].ns, "-br", "link").stdout
    assert "vnx4242" not in links
    assert a.call(1, "DELETE", "/networks/ov/overlay").status_code == 404


def test_other_vni_is_isolated_and_bad_input_is_refused(agents: Agents) -> None:
    a, lab = agents, agents.lab
    h0, h1 = lab.hosts[0].address, lab.hosts[1].address
    for i, vni in ((0, 100), (1, 200)):  # same subnet, different VNIs: no path
        assert a.call(i, "POST", "/networks", json={"name": "iso", "cidr": "198.19.65.0/24",
                                                    "dhcp": False}).status_code == 201
        local, peer = (h0, h1) if i == 0 else (h1, h0)
        r = a.call(i, "PUT", "/networks/iso/overlay",
                   json={"vni": vni, "local": local, "peers": [peer]})
        assert r.status_code == 200, r.text
    g0 = a.guest(0, "vnb-iso", "198.19.65.10/24")
    a.guest(1, "vnb-iso", "198.19.65.11/24")
    assert not ping(g0, "198.19.65.11", 2)

    bad = [
        ("/networks/nope/overlay", {"vni": 5, "local": h0, "peers": []}, 404),
        ("/networks/iso/overlay", {"vni": 0, "local": h0, "peers": []}, 422),
        ("/networks/iso/overlay", {"vni": 100, "local": "198.19.201.99", "peers": []}, 400),
        ("/networks/iso/overlay", {"vni": 100, "local": h0, "peers": ["x"]}, 400),
        ("/networks/iso/overlay", {"vni": 100, "local": h0, "peers": [h0]}, 400),
    ]
    for path, body, status in bad:
        r = a.call(0, "PUT", path, json=body)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    # a VNI in use by another network on the host is a conflict
    assert a.call(0, "POST", "/networks", json={"name": "iso2", "cidr": "198.19.66.0/24",
                                                "dhcp": False}).status_code == 201
    r = a.call(0, "PUT", "/networks/iso2/overlay", json={"vni": 100, "local": h0, "peers": []})
    assert r.status_code == 409 and "iso" in r.json()["error"]
    # the failed calls left the working overlay as it was
    assert a.call(0, "GET", "/overlays").json()[0]["peers"] == [h1]
