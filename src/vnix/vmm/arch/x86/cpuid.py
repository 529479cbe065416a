"""The CPUID a vnix guest sees: KVM's supported list, normalised per vCPU.

Starts from KVM_GET_SUPPORTED_CPUID (passed in; this module never calls KVM) and, following
Firecracker's ``cpuid`` normalisation and QEMU's ``-cpu host``:

* topology: one socket, ``nr_vcpus`` cores, one thread each. Leaf 1 EBX[31:24] = APIC ID =
  vCPU index, EBX[23:16] = logical processors, EDX.HTT when more than one; leaf 4 EAX[31:26]
  cores per package - 1 and EAX[25:14] sharing (L3 shared by all); leaves 0xB / 0x1F (x2APIC
  topology, SDM vol. 2A "CPUID—Extended Topology Enumeration Leaf"): SMT level (1 logical
  processor, shift 0), core level (``nr_vcpus``, shift ceil(log2 n)), then an invalid level;
  EDX = x2APIC ID on every subleaf. AMD: 0x80000008 ECX NC and 0x8000001E EAX APIC ID.
* hypervisor bit (leaf 1 ECX[31]) and KVM's signature leaf 0x40000000 "KVMKVMKVM\\0\\0\\0".
* cleared because a VMM cannot offer them: MONITOR/MWAIT (leaf 1 ECX[3], leaf 5), VMX/SMX
  (no nested virtualization), SVM, thermal/power features (leaf 1 EDX DS/ACPI/TM/PBE, EST, TM2;
  leaf 6 keeps only ARAT), the PMU (leaf 0xA, PDCM) unless asked, TSC deadline unless the
  in-kernel LAPIC offers it (KVM_CAP_TSC_DEADLINE_TIMER), and on software-nested hosts CX16
  and PCID (the emulator lacks cmpxchg16b; see notes/kvm-on-these-machines.md).
"""
from __future__ import annotations

from collections.abc import Sequence

from vnix.vmm.arch.x86.cpu_state import CpuidEntry
from vnix.vmm.arch.x86.hostcpu import HostCpu, host_is_software_nested, linux_cmdline_workarounds

__all__ = [
    "guest_cpuid", "describe_features", "vendor", "HostCpu", "host_is_software_nested",
    "linux_cmdline_workarounds", "KVM_CPUID_FLAG_SIGNIFCANT_INDEX",
]

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # (sic) the kernel's spelling
KVM_SIGNATURE_LEAF = 0x40000000
KVM_FEATURES_LEAF = 0x40000001

# leaf 1 ECX
ECX_MONITOR = 1 << 3
ECX_VMX = 1 << 5
ECX_SMX = 1 << 6
ECX_EST = 1 << 7
ECX_TM2 = 1 << 8
ECX_CX16 = 1 << 13
ECX_PDCM = 1 << 15
ECX_PCID = 1 << 17
ECX_TSC_DEADLINE = 1 << 24
ECX_HYPERVISOR = 1 << 31
# leaf 1 EDX
EDX_DS = 1 << 21
EDX_ACPI = 1 << 22
EDX_HTT = 1 << 28
EDX_TM = 1 << 29
EDX_PBE = 1 << 31
# leaf 0x80000001 ECX
EXT_ECX_SVM = 1 << 2
# leaf 6 EAX
LEAF6_ARAT = 1 << 2
# leaf 0xB / 0x1F level types
LEVEL_INVALID = 0
LEVEL_SMT = 1
LEVEL_CORE = 2


def vendor(entries: Sequence[CpuidEntry]) -> str:
    """'GenuineIntel', 'AuthenticAMD', ... from leaf 0 (EBX, EDX, ECX)."""
    for e in entries:
        if e.function == 0:
            raw = b"".join(r.to_bytes(4, "little") for r in (e.ebx, e.edx, e.ecx))
            return raw.decode("ascii", "replace")
    return ""


def _max_basic_leaf(entries: Sequence[CpuidEntry]) -> int:
    return next((e.eax for e in entries if e.function == 0), 0)


def _topology_leaf(function: int, apic_id: int, nr_vcpus: int) -> list[CpuidEntry]:
    core_shift = (nr_vcpus - 1).bit_length()
    flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    return [
        CpuidEntry(function, 0, flags, eax=0, ebx=1, ecx=(LEVEL_SMT << 8) | 0, edx=apic_id),
        CpuidEntry(function, 1, flags, eax=core_shift, ebx=nr_vcpus,
                   ecx=(LEVEL_CORE << 8) | 1, edx=apic_id),
        CpuidEntry(function, 2, flags, eax=0, ebx=0, ecx=(LEVEL_INVALID << 8) | 2, edx=apic_id),
    ]


def guest_cpuid(supported: list[CpuidEntry], vcpu_id: int, nr_vcpus: int, *,
                tsc_deadline: bool | None = None, expose_pmu: bool = False,
                software_nested: bool | None = None) -> list[CpuidEntry]:
    """The CPUID entries for vCPU ``vcpu_id`` of ``nr_vcpus`` (for KVM_SET_CPUID2).

    ``tsc_deadline``: None keeps what KVM reports, True/False force it (pass
    KVM_CAP_TSC_DEADLINE_TIMER with an in-kernel LAPIC). ``software_nested``: None asks
    :func:`host_is_software_nested` (the only impure default; tests pass a bool).
    """
    if not 0 <= vcpu_id < nr_vcpus <= 255:
        raise ValueError(f"vCPU {vcpu_id} of {nr_vcpus}: APIC IDs are 8 bits here")
    if software_nested is None:
        software_nested = host_is_software_nested()
    apic_id = vcpu_id
    is_amd = vendor(supported) in ("AuthenticAMD", "HygonGenuine")
    out: list[CpuidEntry] = []
    topology_done: set[int] = set()
    for e in supported:
        f = e.function
        if f == 1:
            ebx = (e.ebx & 0xFFFF) | ((nr_vcpus & 0xFF) << 16) | (apic_id << 24)
            ecx = e.ecx | ECX_HYPERVISOR
            ecx &= ~(ECX_MONITOR | ECX_VMX | ECX_SMX | ECX_EST | ECX_TM2)
            if tsc_deadline is not None:
                ecx = ecx | ECX_TSC_DEADLINE if tsc_deadline else ecx & ~ECX_TSC_DEADLINE
            if not expose_pmu:
                ecx &= ~ECX_PDCM
            if software_nested:
                ecx &= ~(ECX_CX16 | ECX_PCID)
            edx = e.edx & ~(EDX_DS | EDX_ACPI | EDX_TM | EDX_PBE)
            edx = edx | EDX_HTT if nr_vcpus > 1 else edx & ~EDX_HTT
            out.append(e.replace(ebx=ebx, ecx=ecx, edx=edx))
        elif f == 4 and not is_amd:
            cache_level = (e.eax >> 5) & 0x7
            sharing = nr_vcpus - 1 if cache_level == 3 else 0
            eax = (e.eax & 0x3FFF) | ((sharing & 0xFFF) << 14) | (((nr_vcpus - 1) & 0x3F) << 26)
            out.append(e.replace(eax=eax if e.eax & 0x1F else e.eax))
        elif f == 5:
            out.append(e.replace(eax=0, ebx=0, ecx=0, edx=0))
        elif f == 6:
            out.append(e.replace(eax=e.eax & LEAF6_ARAT, ebx=0, ecx=0, edx=0))
        elif f == 0xA and not expose_pmu:
            out.append(e.replace(eax=0, ebx=0, ecx=0, edx=0))
        elif f in (0xB, 0x1F):
            if f not in topology_done:
                out.extend(_topology_leaf(f, apic_id, nr_vcpus))
                topology_done.add(f)
        elif f == KVM_SIGNATURE_LEAF:
            continue  # rewritten below
        elif f == 0x80000001:
            out.append(e.replace(ecx=e.ecx & ~EXT_ECX_SVM))
        elif f == 0x80000008 and is_amd:
            core_shift = (nr_vcpus - 1).bit_length()
            ecx = (e.ecx & ~0xF0FF) | (core_shift << 12) | ((nr_vcpus - 1) & 0xFF)
            out.append(e.replace(ecx=ecx))
        elif f == 0x8000001E and is_amd:
            out.append(e.replace(eax=apic_id, ebx=e.ebx & ~0xFF | vcpu_id & 0xFF))
        else:
            out.append(e)
    if 0xB not in topology_done and _max_basic_leaf(supported) >= 0xB:
        out.extend(_topology_leaf(0xB, apic_id, nr_vcpus))
    has_features_leaf = any(e.function == KVM_FEATURES_LEAF for e in supported)
    sig = b"KVMKVMKVM\0\0\0"
    out.append(CpuidEntry(
        KVM_SIGNATURE_LEAF, 0, 0,
        eax=KVM_FEATURES_LEAF if has_features_leaf else KVM_SIGNATURE_LEAF,
        ebx=int.from_bytes(sig[0:4], "little"),
        ecx=int.from_bytes(sig[4:8], "little"),
        edx=int.from_bytes(sig[8:12], "little"),
    ))
    return sorted(out, key=lambda x: (x.function, x.index))


# (function, index, register, bit, /proc/cpuinfo name)
_FEATURES: list[tuple[int, int, str, int, str]] = [
    (1, 0, "edx", 0, "fpu"), (1, 0, "edx", 4, "tsc"), (1, 0, "edx", 5, "msr"),
    (1, 0, "edx", 6, "pae"), (1, 0, "edx", 9, "apic"), (1, 0, "edx", 25, "sse"),
    (1, 0, "edx", 26, "sse2"), (1, 0, "edx", 28, "ht"),
    (1, 0, "ecx", 0, "pni"), (1, 0, "ecx", 1, "pclmulqdq"), (1, 0, "ecx", 3, "monitor"),
    (1, 0, "ecx", 5, "vmx"), (1, 0, "ecx", 9, "ssse3"), (1, 0, "ecx", 12, "fma"),
    (1, 0, "ecx", 13, "cx16"), (1, 0, "ecx", 17, "pcid"), (1, 0, "ecx", 19, "sse4_1"),
    (1, 0, "ecx", 20, "sse4_2"), (1, 0, "ecx", 21, "x2apic"), (1, 0, "ecx", 22, "movbe"),
    (1, 0, "ecx", 23, "popcnt"), (1, 0, "ecx", 24, "tsc_deadline_timer"),
    (1, 0, "ecx", 25, "aes"), (1, 0, "ecx", 26, "xsave"), (1, 0, "ecx", 28, "avx"),
    (1, 0, "ecx", 29, "f16c"), (1, 0, "ecx", 30, "rdrand"), (1, 0, "ecx", 31, "hypervisor"),
    (7, 0, "ebx", 0, "fsgsbase"), (7, 0, "ebx", 3, "bmi1"), (7, 0, "ebx", 5, "avx2"),
    (7, 0, "ebx", 7, "smep"), (7, 0, "ebx", 8, "bmi2"), (7, 0, "ebx", 9, "erms"),
    (7, 0, "ebx", 10, "invpcid"), (7, 0, "ebx", 16, "avx512f"), (7, 0, "ebx", 18, "rdseed"),
    (7, 0, "ebx", 19, "adx"), (7, 0, "ebx", 20, "smap"), (7, 0, "ebx", 29, "sha_ni"),
    (7, 0, "ecx", 2, "umip"), (7, 0, "ecx", 3, "pku"), (7, 0, "ecx", 22, "rdpid"),
    (0x80000001, 0, "ecx", 0, "lahf_lm"), (0x80000001, 0, "ecx", 2, "svm"),
    (0x80000001, 0, "ecx", 5, "abm"), (0x80000001, 0, "edx", 11, "syscall"),
    (0x80000001, 0, "edx", 20, "nx"), (0x80000001, 0, "edx", 26, "pdpe1gb"),
    (0x80000001, 0, "edx", 27, "rdtscp"), (0x80000001, 0, "edx", 29, "lm"),
]


def describe_features(entries: Sequence[CpuidEntry]) -> list[str]:
    """The /proc/cpuinfo names of the main features ``entries`` expose, in a fixed order."""
    by_leaf = {(e.function, e.index): e for e in entries}
    names = []
    for function, index, reg, bit, name in _FEATURES:
        e = by_leaf.get((function, index))
        if e is not None and getattr(e, reg) >> bit & 1:
            names.append(name)
    return names
