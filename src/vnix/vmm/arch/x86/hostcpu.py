"""What the host CPU and its KVM are: /proc/cpuinfo flags, and whether KVM is software-nested.

``vnix host check`` and the VMM use this. On the build machines KVM is the ``kvm_pvm`` module
(software-nested: guest kernel code emulated, see notes/kvm-on-these-machines.md); there the
VMM adds :func:`linux_cmdline_workarounds` to a Linux guest's command line.
"""
from __future__ import annotations

import os

from vnix.vmm.record import FrozenRecord, _set


class HostCpu(FrozenRecord):
    __slots__ = ("model_name", "vendor", "flags", "logical_cpus")
    model_name: str
    vendor: str
    flags: frozenset[str]
    logical_cpus: int

    def __init__(self, model_name: str, vendor: str, flags: frozenset[str], logical_cpus: int) -> None:
        _set(self, "model_name", model_name)
        _set(self, "vendor", vendor)
        _set(self, "flags", flags)
        _set(self, "logical_cpus", logical_cpus)

    @classmethod
    def parse(cls, text: str) -> HostCpu:
        """Parse /proc/cpuinfo text (the first processor's model and flags, the CPU count)."""
        model = vendor = ""
        flags: frozenset[str] | None = None
        count = 0
        for line in text.splitlines():
            key, sep, val = line.partition(":")
            if not sep:
                continue
            key, val = key.strip(), val.strip()
            if key == "processor":
                count += 1
            elif key == "model name" and not model:
                model = val
            elif key == "vendor_id" and not vendor:
                vendor = val
            elif key == "flags" and flags is None:
                flags = frozenset(val.split())
        return cls(model, vendor, flags or frozenset(), count)

    @classmethod
    def read(cls, path: str = "/proc/cpuinfo") -> HostCpu:
        with open(path) as f:
            return cls.parse(f.read())

    @property
    def has_vmx(self) -> bool:
        return "vmx" in self.flags

    @property
    def has_svm(self) -> bool:
        return "svm" in self.flags

    @property
    def hardware_virtualization(self) -> str | None:
        """'vmx' (Intel VT-x), 'svm' (AMD-V) or None."""
        return "vmx" if self.has_vmx else "svm" if self.has_svm else None


def host_is_software_nested(sys_module: str = "/sys/module") -> bool:
    """True when /dev/kvm is served by kvm_pvm (software-nested) rather than kvm_intel/kvm_amd."""
    return os.path.exists(os.path.join(sys_module, "kvm_pvm"))  # os.path: pathlib costs start-up


def linux_cmdline_workarounds(host_is_software_nested: bool) -> list[str]:
    """Kernel options that keep a Linux guest off instructions kvm_pvm cannot emulate.

    From notes/kvm-on-these-machines.md: ``xrstor`` (FPU start-up) -> ``noxsave``; ``clac``
    once SMAP is patched in -> ``nosmap``; ``popcnt`` and ``cmpxchg16b`` (SLUB) -> cleared
    from the kernel's feature bits with ``clearcpuid=`` (names accepted since Linux 5.19),
    because CPUID masking is only partly honoured there. Nothing on a hardware-assisted host.
    """
    if not host_is_software_nested:
        return []
    return ["noxsave", "nosmap", "clearcpuid=smap,popcnt,cx16"]
