"""The guest test kit: each guest passes its own checks under QEMU (the reference), and the
native VMM (vnix) prints the same report for the same guest and machine."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vnix.testkit import GUESTS, GuestRun, UnknownGuestError, build, guest_path, run_guest

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

SERIAL_LINE = "hello from the testkit 123"


@dataclass(frozen=True)
class Case:
    guest: str
    cpus: int = 1
    memory_mib: int = 64
    stdin: bytes = b""
    cmdline: str = ""
    id: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # report lines the test itself expects

    @property
    def label(self) -> str:
        return self.id or self.guest


CASES = [
    Case("boot", cmdline="testkit console=ttyS0 x=1", extra={"cmdline": "testkit console=ttyS0 x=1",
                                                          "usable_ram_mib": "64"}),
    Case("boot", memory_mib=256, id="boot-256M", extra={"usable_ram_mib": "256"}),
    Case("cpu"),
    Case("smp", cpus=2, extra={"madt_cpus": "2", "apic_ids": "0,1"}),
    Case("smp", cpus=1, id="smp-1cpu", extra={"madt_cpus": "1", "apic_ids": "0"}),
    Case("exits"),
    Case("serial", stdin=SERIAL_LINE.encode() + b"\n",
         extra={"line": SERIAL_LINE, "reversed": SERIAL_LINE[::-1]}),
    Case("timer"),
    Case("memory", memory_mib=64, id="memory-64M"),
    Case("memory", memory_mib=256, id="memory-256M"),
    Case("compute"),
    Case("smp", cpus=4, id="smp-4cpus", extra={"madt_cpus": "4", "apic_ids": "0,1,2,3"}),
    Case("smp", cpus=8, id="smp-8cpus", extra={"madt_cpus": "8", "apic_ids": "0,1,2,3,4,5,6,7"}),
]
# Every guest's report must not depend on how many vCPUs sit idle beside the boot CPU.
CASES += [Case(g, cpus=n, id=f"{g}-{n}cpus") for n in (2, 4) for g in GUESTS if g not in ("smp", "serial")]


@pytest.fixture(scope="session", autouse=True)
def built_guests() -> list[Path]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed (scripts/install-deps.sh)")
    return build()


def _run(case: Case, vmm: str) -> GuestRun:
    return run_guest(case.guest, vmm=vmm, cpus=case.cpus, memory_mib=case.memory_mib,  # type: ignore[arg-type]
                     stdin=case.stdin, cmdline=case.cmdline, timeout=60)


_qemu_cache: dict[str, GuestRun] = {}


def _qemu(case: Case) -> GuestRun:
    if case.label not in _qemu_cache:
        _qemu_cache[case.label] = _run(case, "qemu")
    return _qemu_cache[case.label]


def test_every_guest_is_covered() -> None:
    assert {c.guest for c in CASES} == set(GUESTS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_guest_passes_under_qemu(case: Case) -> None:
    run = _qemu(case)
    assert run.passed, run.summary() + "\n" + run.output
    assert run.lines[0] == f"ready: {case.guest}"
    facts = run.report.facts
    for key, value in case.extra.items():
        assert facts.get(key) == value, f"{key}: {facts.get(key)!r} != {value!r}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_vnix_report_matches_qemu(case: Case) -> None:
    reference = _qemu(case)
    assert reference.passed, "the guest fails under QEMU: " + reference.summary()
    run = _run(case, "vnix")
    assert run.report.complete, run.summary() + "\n" + run.output[-2000:] + run.stderr[-2000:]
    assert run.lines == reference.lines, run.summary()
    assert run.status == reference.status, run.summary()


def test_memory_report_scales_with_ram() -> None:
    small = _qemu(next(c for c in CASES if c.label == "memory-64M")).report.facts
    big = _qemu(next(c for c in CASES if c.label == "memory-256M")).report.facts
    assert small["errors"] == big["errors"] == "0"
    assert 60 <= int(small["tested_mib"]) < 64
    assert 250 <= int(big["tested_mib"]) < 256


def test_exits_bench_prints_cycles_after_the_report() -> None:
    run = run_guest("exits", vmm="qemu", cmdline="bench=200")
    assert run.passed, run.summary()
    assert run.extras["bench_out_n"] == "200"
    assert int(run.extras["bench_out_cycles"]) > 0
    assert not any(line.startswith("bench_") for line in run.lines)


def test_unknown_guest_is_a_usage_error() -> None:
    with pytest.raises(UnknownGuestError, match="no test-kit guest 'nope'") as info:
        guest_path("nope")
    assert info.value.exit_code == 2
