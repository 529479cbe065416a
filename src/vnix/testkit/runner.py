"""Build the test-kit guests and run one under vnix or QEMU (the reference).

Both VMMs get the same machine: ``cpus`` vCPUs, ``memory_mib`` of RAM, a 16550 on 0x3f8 wired
to the process's stdin/stdout, and the QEMU-compatible isa-debug-exit on port 0x501, through
which a guest ends the VMM with status ``(value << 1) | 1`` (1 = every check passed, 3 = some
failed). :func:`qemu_argv` and :func:`vnix_argv` are public so benchmarks run the exact same
commands.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vnix.testkit.errors import BuildError, UnknownGuestError
from vnix.testkit.report import GuestReport, parse_output

Vmm = Literal["vnix", "qemu"]

#: guests/testkit in the source tree (src/vnix/testkit/runner.py -> repository root).
TESTKIT_DIR = Path(
    os.environ.get("VNIX_TESTKIT_DIR", Path(__file__).resolve().parents[3] / "guests" / "testkit")
)
GUESTS: tuple[str, ...] = (
    "boot", "cpu", "smp", "exits", "serial", "timer", "memory", "compute",
)
QEMU = "qemu-system-x86_64"
#: microvm with exactly the legacy devices the guests use and vnix provides: PIT, RTC, one
#: I/O APIC, ACPI (MADT), the ISA serial port; no 8259 PIC, no virtio-mmio cmdline additions.
QEMU_MACHINE = "microvm,pit=on,pic=off,rtc=on,acpi=on,isa-serial=on,ioapic2=off,auto-kernel-cmdline=off"
DEBUG_EXIT_OK = 1  # debug-exit value 0 -> status 1
DEBUG_EXIT_FAILED = 3  # value 1 -> status 3


@dataclass(frozen=True)
class GuestRun:
    name: str
    vmm: Vmm
    argv: list[str]
    status: int | None  # None: killed after the timeout
    output: str  # everything the guest wrote on its serial port
    stderr: str
    report: GuestReport
    wall_s: float  # process start -> exit
    ready_s: float | None  # process start -> the guest's "ready:" line
    timed_out: bool = False
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        """The report's lines between BEGIN and END: what two VMMs must agree on."""
        return self.report.lines

    @property
    def checks(self) -> dict[str, bool]:
        return self.report.checks

    @property
    def passed(self) -> bool:
        """Exit through debug-exit with 0, a complete report, every self-check ok."""
        return (
            self.status == DEBUG_EXIT_OK
            and self.report.complete
            and bool(self.report.checks)
            and all(self.report.checks.values())
        )

    def summary(self) -> str:
        """One line for an assertion message or a log."""
        why = "; ".join(self.report.failures) or ("incomplete report" if not self.report.complete else "")
        state = "timed out" if self.timed_out else f"status {self.status}"
        tail = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else []
        return f"{self.name} under {self.vmm}: {state}" + (f", {why}" if why else "") + (
            f", stderr: {tail[0]}" if tail and not self.passed else ""
        )


def build(*, quiet: bool = True) -> list[Path]:
    """Run ``make -C guests/testkit``; return the built guests' paths."""
    cmd = ["make", "-C", str(TESTKIT_DIR)] + (["-s"] if quiet else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"building the test-kit guests failed: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise BuildError("building the test-kit guests failed: " + " | ".join(tail))
    return [guest_path(g) for g in GUESTS]


def guest_path(name: str) -> Path:
    """guests/testkit/build/<name>.elf (raises UnknownGuestError for a name not in GUESTS)."""
    if name not in GUESTS:
        raise UnknownGuestError(f"no test-kit guest {name!r} (known: {', '.join(GUESTS)})")
    return TESTKIT_DIR / "build" / f"{name}.elf"


def qemu_argv(
    elf: str | Path, *, cpus: int = 1, memory_mib: int = 64, cmdline: str = "",
    accel: Literal["kvm", "tcg"] = "kvm",
) -> list[str]:
    """The reference command: QEMU microvm booting the PVH ELF, serial on stdio."""
    accel_args = ["-enable-kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    argv = [
        QEMU, "-M", QEMU_MACHINE, *accel_args,
        "-m", f"{memory_mib}M", "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0x501,iosize=2",
        "-kernel", str(elf),
    ]
    if cmdline:
        argv += ["-append", cmdline]
    return argv


def vnix_argv(
    elf: str | Path, *, cpus: int = 1, memory_mib: int = 64, cmdline: str = "",
    python: str | None = None,
) -> list[str]:
    """The native VMM's command: ``python -m vnix.vmm`` with debug-exit, serial on stdio."""
    from vnix.vmm.launch import vmm_argv

    args = ["--kernel", str(elf), "--memory", f"{memory_mib}M", "--cpus", str(cpus), "--debug-exit"]
    if cmdline:
        args += ["--cmdline", cmdline]
    return vmm_argv(args, python=python)


def run_guest(
    name: str, *, vmm: Vmm, cpus: int = 1, memory_mib: int = 64, stdin: bytes = b"",
    cmdline: str = "", timeout: float = 60,
) -> GuestRun:
    """Boot guest ``name`` under ``vmm`` and collect its report (builds the guests if needed)."""
    if vmm not in ("vnix", "qemu"):
        raise UnknownGuestError(f"unknown VMM {vmm!r} (vnix or qemu)")
    elf = guest_path(name)
    if not elf.is_file():
        build()
    make_argv = qemu_argv if vmm == "qemu" else vnix_argv
    argv = make_argv(elf, cpus=cpus, memory_mib=memory_mib, cmdline=cmdline)
    status, out, err, wall, ready, timed_out = _run(argv, stdin, timeout)
    text = out.decode("utf-8", "replace")
    report = parse_output(text)
    return GuestRun(
        name, vmm, argv, status, text, err.decode("utf-8", "replace"), report, wall, ready,
        timed_out, dict(report.extras),
    )


def _run(
    argv: list[str], stdin: bytes, timeout: float,
) -> tuple[int | None, bytes, bytes, float, float | None, bool]:
    """Run argv, feed stdin, read stdout/stderr until exit; time the "ready:" line."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise BuildError(f"cannot start {argv[0]}: {exc}") from None
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        if stdin:
            proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    out, err = bytearray(), bytearray()
    ready: float | None = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    deadline = start + timeout
    timed_out = False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(min(left, 1.0)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            key.data.extend(chunk)
            if ready is None and key.data is out and b"\nready: " in out:
                ready = time.monotonic() - start
    sel.close()
    if timed_out:
        proc.kill()
    try:
        status: int | None = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = proc.wait()
    wall = time.monotonic() - start
    proc.stdout.close()
    proc.stderr.close()
    return (None if timed_out else status), bytes(out), bytes(err), wall, ready, timed_out
