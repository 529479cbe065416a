"""Which QEMU accelerator to use on this host: KVM where it is hardware-assisted, TCG where it is
not (a software-nested ``kvm_pvm`` host emulates guest kernel code ~1000x slower, see
shared/notes/kvm-on-these-machines.md: the tiny Linux guest boots in ~8 s under TCG and in
minutes under that KVM). The user can force either. A guest of another instruction set
(an aarch64 guest on an x86_64 host) has only TCG: KVM runs guests of the host's own ISA.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal

from vnix.hypervisor.errors import DriverUnavailable


def _host_recommendation() -> Literal["kvm", "tcg"] | None:
    """What ``vnix host check`` says (vnix.host.kvm_status: hardware / software-nested / ...)."""
    try:
        from vnix.host import kvm_status
    except ImportError:
        return None
    try:
        kind, _why = kvm_status()
    except Exception:  # the host check is advice; fall back to our own look
        return None
    return "kvm" if kind == "hardware" else "tcg"


def hardware_kvm() -> bool:
    """True if /dev/kvm is usable and backed by VT-x/AMD-V (not the software-nested kvm_pvm)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if Path("/sys/module/kvm_pvm").exists():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("vmx", "svm"))


def host_isa() -> str:
    """The host's instruction set in ``uname -m`` terms (x86_64, aarch64)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def choose_accel(requested: str = "auto", guest_arch: str | None = None) -> Literal["kvm", "tcg"]:
    """``auto`` -> the host's recommendation; ``kvm``/``tcg`` are honoured if possible.

    ``guest_arch`` (``uname -m`` name) other than the host's means TCG: ``auto`` picks it and
    ``kvm`` is refused."""
    if requested == "tcg":
        return "tcg"
    if guest_arch is not None and guest_arch != host_isa():
        if requested == "kvm":
            raise DriverUnavailable(f"KVM runs only {host_isa()} guests on this host; an "
                                    f"{guest_arch} guest needs accel tcg")
        if requested == "auto":
            return "tcg"
    if requested == "kvm":
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise DriverUnavailable("accel kvm asked for, but /dev/kvm is missing or not writable")
        return "kvm"
    if requested != "auto":
        raise DriverUnavailable(f"unknown accelerator {requested!r} (auto, kvm or tcg)")
    return _host_recommendation() or ("kvm" if hardware_kvm() else "tcg")
