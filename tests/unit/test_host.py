"""Parsing behind `vnix host check` and the driver recommendation."""
from __future__ import annotations

from vnix.host import Check, cpu_flags, has_capability, kvm_kind, parse_qemu_version

INTEL = "processor\t: 0\nflags\t\t: fpu vme vmx sse sse2 ssse3\n\nprocessor\t: 1\nflags\t\t: fpu\n"
NESTED = "processor\t: 0\nflags\t\t: fpu sse sse2 hypervisor\n"


def test_cpu_flags_first_processor() -> None:
    assert cpu_flags(INTEL) == {"fpu", "vme", "vmx", "sse", "sse2", "ssse3"}
    assert cpu_flags("") == set()


def test_kvm_kind() -> None:
    assert kvm_kind(INTEL, {"kvm", "kvm_intel"}, True)[0] == "hardware"
    kind, why = kvm_kind(NESTED, {"kvm", "kvm_pvm"}, True)
    assert kind == "software-nested" and "kvm_pvm" in why
    assert kvm_kind(INTEL, {"kvm_intel"}, False)[0] == "none"
    # /dev/kvm without vmx/svm and without a hardware module is not trusted as hardware
    assert kvm_kind(NESTED, {"kvm"}, True)[0] == "software-nested"


def test_qemu_version_and_capabilities() -> None:
    assert parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)\n") == "7.2.22"
    assert parse_qemu_version("qemu-img version 8.0.0\n") == "8.0.0"
    assert parse_qemu_version("garbage") is None
    assert has_capability("Name:\tx\nCapEff:\t000001ffffffffff\n", 12)
    assert not has_capability("CapEff:\t0000000000000000\n", 12)
    assert not has_capability("", 12)


def test_check_line_format() -> None:
    line = Check("warn", "/dev/vhost-net", "absent: modprobe vhost_net").line()
    assert line.split()[0] == "warn" and line.split()[1] == "/dev/vhost-net"
    assert line.endswith("absent: modprobe vhost_net")
