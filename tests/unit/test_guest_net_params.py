"""The kernel parameters the tiny guest's /init reads for eth0 (vnix.ip=, vnix.dhcp=1)."""
from __future__ import annotations

import pytest

from vnix.errors import UsageError
from vnix.images.guest_init import INIT_SCRIPT, ip_param, with_network


def test_static_address_with_and_without_gateway() -> None:
    assert ip_param("198.18.1.5/24", "198.18.1.1") == "vnix.ip=198.18.1.5/24,gw=198.18.1.1"
    assert ip_param("198.18.1.5/24") == "vnix.ip=198.18.1.5/24"
    with pytest.raises(UsageError):
        ip_param("198.18.1.5")  # no prefix: the guest would guess /32
    with pytest.raises(UsageError):
        ip_param("198.18.1.5/24 init=/bin/sh")  # one word on the command line, nothing more


def test_with_network_adds_one_parameter_and_keeps_the_callers() -> None:
    base = "console=ttyS0 quiet"
    assert with_network(base, "198.18.1.5/24", "198.18.1.1") == (
        "console=ttyS0 quiet vnix.ip=198.18.1.5/24,gw=198.18.1.1")
    assert with_network(base, None, "198.18.1.1", dhcp=True) == "console=ttyS0 quiet vnix.dhcp=1"
    assert with_network(base, "198.18.1.5/24", dhcp=True).endswith("vnix.ip=198.18.1.5/24")
    assert with_network(base, None) == base
    mine = "console=ttyS0 vnix.dhcp=1"
    assert with_network(mine, "198.18.1.5/24") == mine  # the user's choice wins
    assert with_network("vnix.ip=198.18.9.9/24", None, dhcp=True) == "vnix.ip=198.18.9.9/24"


def test_init_carries_the_scripts_it_writes() -> None:
    assert "@POWER_SCRIPT@" not in INIT_SCRIPT and "@UDHCPC_SCRIPT@" not in INIT_SCRIPT
    assert "/etc/acpi/PWRF/00000080" in INIT_SCRIPT and "acpid -c /etc/acpi" in INIT_SCRIPT
    assert "udhcpc -i eth0 -s /etc/udhcpc.script" in INIT_SCRIPT
