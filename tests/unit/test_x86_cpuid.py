"""CPUID normalisation per vCPU, feature names, host CPU parsing, MSRs and GDT encoding."""
from __future__ import annotations

from pathlib import Path

import pytest

from vnix.vmm.arch.x86.cpu_state import CpuidEntry, Segment
from vnix.vmm.arch.x86.cpuid import (
    KVM_SIGNATURE_LEAF,
    HostCpu,
    describe_features,
    guest_cpuid,
    linux_cmdline_workarounds,
    vendor,
)
from vnix.vmm.arch.x86.gdt import encode_segment, gdt_entry, segment_from_entry
from vnix.vmm.arch.x86.msrs import boot_msrs


def _intel(max_leaf: int = 0x1F) -> list[CpuidEntry]:
    """What KVM_GET_SUPPORTED_CPUID says on an Intel host (abridged, host values)."""
    b, d, c = (int.from_bytes(s, "little") for s in (b"Genu", b"ineI", b"ntel"))
    return [
        CpuidEntry(0, eax=max_leaf, ebx=b, ecx=c, edx=d),
        # leaf 1: host APIC ID 7 in EBX[31:24], clflush 8; ECX with monitor, vmx, cx16, pcid,
        # sse4_2, x2apic, popcnt, xsave, avx, pdcm; EDX fpu, tsc, apic, sse2, ds, acpi, tm, pbe
        CpuidEntry(1, eax=0x806F8, ebx=(7 << 24) | (0x40 << 16) | (8 << 8),
                   ecx=(1 << 3) | (1 << 5) | (1 << 13) | (1 << 15) | (1 << 17) | (1 << 20)
                   | (1 << 21) | (1 << 23) | (1 << 26) | (1 << 28),
                   edx=1 | (1 << 4) | (1 << 9) | (1 << 26) | (1 << 21) | (1 << 22) | (1 << 29)
                   | (1 << 31) | (1 << 28)),
        CpuidEntry(4, 0, 1, eax=0x121 | (0x3F << 26) | (1 << 14)),  # L1d
        CpuidEntry(4, 3, 1, eax=0x163 | (0x3F << 26) | (0x7F << 14)),  # L3
        CpuidEntry(5, eax=0x40, ebx=0x40, ecx=3, edx=0x1120),
        CpuidEntry(6, eax=0x77, ecx=0x9),
        CpuidEntry(7, 0, 1, ebx=(1 << 5) | (1 << 20)),  # avx2, smap
        CpuidEntry(0xA, eax=0x07300805, ebx=0, edx=0x603),
        CpuidEntry(0xB, 0, 1, eax=1, ebx=2, ecx=0x100, edx=7),
        CpuidEntry(0xB, 1, 1, eax=7, ebx=64, ecx=0x201, edx=7),
        CpuidEntry(0x1F, 0, 1, eax=1, ebx=2, ecx=0x100, edx=7),
        CpuidEntry(KVM_SIGNATURE_LEAF, eax=0x40000001, ebx=1, ecx=2, edx=3),
        CpuidEntry(0x40000001, eax=0x01007AFB),
        CpuidEntry(0x80000001, ecx=1 | (1 << 2), edx=(1 << 11) | (1 << 20) | (1 << 29)),
    ]


def _leaf(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    [e] = [e for e in entries if e.function == function and e.index == index]
    return e


@pytest.mark.parametrize("nr_vcpus", [1, 2, 4])
def test_each_vcpu_gets_its_own_apic_id(nr_vcpus: int) -> None:
    for vcpu in range(nr_vcpus):
        cpuid = guest_cpuid(_intel(), vcpu, nr_vcpus)
        leaf1 = _leaf(cpuid, 1)
        assert leaf1.ebx >> 24 == vcpu
        assert (leaf1.ebx >> 16) & 0xFF == nr_vcpus
        assert (leaf1.ebx >> 8) & 0xFF == 8  # clflush size kept
        assert bool(leaf1.edx >> 28 & 1) == (nr_vcpus > 1)  # HTT
        for f in (0xB, 0x1F):
            smt, core, end = (_leaf(cpuid, f, i) for i in range(3))
            assert smt.edx == core.edx == end.edx == vcpu  # x2APIC ID on every subleaf
            assert (smt.ebx, smt.ecx >> 8 & 0xFF) == (1, 1)  # 1 thread per core, level SMT
            assert (core.ebx, core.ecx >> 8 & 0xFF) == (nr_vcpus, 2)  # level core
            assert 1 << core.eax >= nr_vcpus  # shift covers all APIC IDs
            assert end.ecx >> 8 & 0xFF == 0  # invalid level ends enumeration
        l3 = _leaf(cpuid, 4, 3)
        assert l3.eax >> 26 == nr_vcpus - 1 and (l3.eax >> 14) & 0xFFF == nr_vcpus - 1
        assert l3.eax & 0x3FFF == 0x163  # cache type/level kept
        assert (_leaf(cpuid, 4, 0).eax >> 14) & 0xFFF == 0  # L1 not shared


def test_vmm_normalisation() -> None:
    cpuid = guest_cpuid(_intel(), 0, 2, tsc_deadline=False, software_nested=False)
    leaf1 = _leaf(cpuid, 1)
    assert leaf1.ecx >> 31 & 1  # hypervisor
    for bit in (3, 5, 15, 24):  # monitor, vmx, pdcm, tsc-deadline (not asked for)
        assert not leaf1.ecx >> bit & 1, bit
    for bit in (21, 22, 29, 31):  # ds, acpi, tm, pbe
        assert not leaf1.edx >> bit & 1, bit
    assert leaf1.ecx >> 13 & 1 and leaf1.ecx >> 20 & 1  # cx16, sse4_2 kept on a real host
    assert _leaf(cpuid, 5) == CpuidEntry(5)
    assert _leaf(cpuid, 6).eax == 1 << 2  # ARAT only
    assert _leaf(cpuid, 0xA) == CpuidEntry(0xA)  # no PMU
    assert not _leaf(cpuid, 0x80000001).ecx >> 2 & 1  # no SVM
    sig = _leaf(cpuid, KVM_SIGNATURE_LEAF)
    raw = b"".join(r.to_bytes(4, "little") for r in (sig.ebx, sig.ecx, sig.edx))
    assert raw == b"KVMKVMKVM\0\0\0" and sig.eax == 0x40000001
    assert _leaf(cpuid, 0x40000001).eax == 0x01007AFB  # KVM's feature leaf passes through
    # the supported list is not modified
    assert _leaf(_intel(), 1).ebx >> 24 == 7


def test_options() -> None:
    on = _leaf(guest_cpuid(_intel(), 0, 1, tsc_deadline=True, expose_pmu=True), 1)
    assert on.ecx >> 24 & 1 and on.ecx >> 15 & 1
    pmu = _leaf(guest_cpuid(_intel(), 0, 1, expose_pmu=True), 0xA)
    assert pmu.eax == 0x07300805
    off = guest_cpuid([_intel()[1].replace(ecx=1 << 24)], 0, 1, tsc_deadline=False)
    assert not off[0].ecx >> 24 & 1
    kept = guest_cpuid([_intel()[1].replace(ecx=1 << 24)], 0, 1)  # KVM's answer stands
    assert kept[0].ecx >> 24 & 1
    nested = _leaf(guest_cpuid(_intel(), 0, 1, software_nested=True), 1)
    assert not nested.ecx >> 13 & 1 and not nested.ecx >> 17 & 1  # cx16, pcid hidden


def test_topology_leaf_added_when_kvm_omits_it() -> None:
    supported = [e for e in _intel() if e.function not in (0xB, 0x1F)]
    cpuid = guest_cpuid(supported, 1, 2)
    assert _leaf(cpuid, 0xB, 1).edx == 1
    assert not [e for e in cpuid if e.function == 0x1F]


def test_bad_vcpu_numbers() -> None:
    with pytest.raises(ValueError):
        guest_cpuid(_intel(), 2, 2)


def test_describe_features() -> None:
    names = describe_features(guest_cpuid(_intel(), 0, 2, software_nested=False))
    for expected in ("fpu", "sse2", "ht", "sse4_2", "x2apic", "avx", "avx2", "hypervisor",
                     "cx16", "popcnt", "xsave", "smap", "nx", "lm", "syscall"):
        assert expected in names
    for absent in ("vmx", "svm", "monitor", "tsc_deadline_timer", "avx512f"):
        assert absent not in names
    assert vendor(_intel()) == "GenuineIntel"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 ht hypervisor lm x2apic avx2

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 ht hypervisor lm x2apic avx2
"""


def test_host_cpu_parsing(tmp_path: Path) -> None:
    host = HostCpu.parse(CPUINFO)
    assert host.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert host.vendor == "GenuineIntel" and host.logical_cpus == 2
    assert "avx2" in host.flags and host.hardware_virtualization is None
    with_vmx = HostCpu.parse(CPUINFO.replace("avx2", "avx2 vmx"))
    assert with_vmx.has_vmx and with_vmx.hardware_virtualization == "vmx"
    real = HostCpu.read()  # this machine's /proc/cpuinfo
    assert real.logical_cpus >= 1 and "lm" in real.flags


def test_cmdline_workarounds_only_on_software_nested_hosts() -> None:
    assert linux_cmdline_workarounds(False) == []
    opts = linux_cmdline_workarounds(True)
    assert "noxsave" in opts and "nosmap" in opts
    assert any(o.startswith("clearcpuid=") and "popcnt" in o for o in opts)


def test_boot_msrs_match_firecracker() -> None:
    msrs = {m.index: m.value for m in boot_msrs()}
    for index in (0x174, 0x175, 0x176, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
                  0xC0000102, 0x10):
        assert msrs[index] == 0
    assert msrs[0x1A0] & 1  # fast strings
    assert msrs[0x2FF] == 0x806  # MTRRs on, default write-back


def test_gdt_entries_round_trip() -> None:
    code64 = gdt_entry(0xA09B, 0, 0xFFFFF)
    assert code64 == 0x00AF9B000000FFFF  # the value every VMM writes for __BOOT_CS
    seg = segment_from_entry(code64, 2)
    assert (seg.selector, seg.l, seg.db, seg.g, seg.limit, seg.type) == (0x10, 1, 0, 1,
                                                                         0xFFFFFFFF, 0xB)
    assert encode_segment(seg) == code64
    data = Segment(base=0x12345678, limit=0xFFFF, selector=0x18, type=3, db=1, g=0)
    assert segment_from_entry(encode_segment(data), 3) == data
    with pytest.raises(ValueError):
        encode_segment(Segment(limit=0x1FFFFF, g=0))
