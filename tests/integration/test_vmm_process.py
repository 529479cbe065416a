"""The VMM process end to end with hand-assembled flat guests (32-bit protected mode at 1 MiB).

Each guest is a few bytes of machine code written here, so these tests need /dev/kvm but no
toolchain. They check what a user sees: console output, the exit status, the stats file.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]

BASE = 0x100000


# -- a tiny assembler for the few instructions the guests use ---------------------------------------
def out(port: int, value: int) -> bytes:
    """mov al, value; out port, al"""
    if port < 0x100:
        return bytes([0xB0, value, 0xE6, port])
    return b"\x66\xba" + struct.pack("<H", port) + bytes([0xB0, value, 0xEE])


def inb(port: int) -> bytes:
    """in al, port"""
    if port < 0x100:
        return bytes([0xE4, port])
    return b"\x66\xba" + struct.pack("<H", port) + b"\xec"


def say(text: bytes) -> bytes:
    return b"".join(out(0x3F8, c) for c in text)


DEBUG_EXIT_AL = b"\x66\xba\x01\x05\xee"  # out 0x501, al
HALT = b"\xf4\xeb\xfd"  # hlt; jmp $-1


def debug_exit(value: int) -> bytes:
    return out(0x501, value) + HALT


def vmm(tmp_path: Path, code: bytes, *flags: str, stdin: bytes | None = b"", timeout: float = 30) -> tuple[subprocess.CompletedProcess[bytes], dict]:
    image = tmp_path / "guest.bin"
    image.write_bytes(code)
    stats = tmp_path / "stats.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vnix.vmm", "--flat", "--kernel", str(image), "--memory", "64M",
         "--stats-json", str(stats), *flags],
        input=stdin, capture_output=True, timeout=timeout,
    )
    data = json.loads(stats.read_text()) if stats.exists() else {}
    return proc, data


# -- output and debug-exit ------------------------------------------------------------------------
def test_guest_prints_and_exits_with_debug_exit_status(tmp_path: Path) -> None:
    text = b"Hello from vnix!\n"
    proc, stats = vmm(tmp_path, say(text) + debug_exit(1), "--debug-exit")
    assert proc.stdout == text
    assert proc.returncode == 3  # (1 << 1) | 1, as QEMU
    assert proc.stderr == b""
    assert stats["io_out_by_port"] == {"0x3f8": len(text), "0x501": 1}
    assert stats["exits"]["io_out"] == len(text) + 1
    assert stats["serial_bytes"] == len(text)
    t = stats["timings_ms"]
    assert 0 < t["vm_created"] <= t["first_kvm_run"] <= t["first_serial_byte"] <= t["exit"]


def test_debug_exit_value_maps_like_qemu(tmp_path: Path) -> None:
    proc, _ = vmm(tmp_path, debug_exit(0x20), "--debug-exit")
    assert proc.returncode == 0x41


def test_without_debug_exit_port_0x501_is_unassigned(tmp_path: Path) -> None:
    # The write goes nowhere; the guest then resets through the i8042 (status 10).
    proc, stats = vmm(tmp_path, out(0x501, 1) + out(0x64, 0xFE) + HALT)
    assert proc.returncode == 10
    assert stats["unassigned"]["pio_writes"] == {"0x501": 1}


def test_string_out_delivers_every_byte(tmp_path: Path) -> None:
    # mov esi, msg; mov ecx, len; mov dx, 0x3f8; rep outsb
    msg = b"rep outsb works\n"
    code = b"\xbe" + struct.pack("<I", BASE + 64) + b"\xb9" + struct.pack("<I", len(msg))
    code += b"\x66\xba\xf8\x03\xf3\x6e" + debug_exit(0)
    proc, _ = vmm(tmp_path, code.ljust(64, b"\x90") + msg, "--debug-exit")
    assert proc.stdout == msg and proc.returncode == 1


# -- how a VM ends --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status"),
    [
        (out(0x64, 0xFE) + HALT, 10),  # i8042 reset pulse
        (b"\x66\xba\x02\x06" + b"\xb0\x01\xee" + HALT, 10),  # ACPI RESET_REG 0x602 <- 1
        (b"\x66\xba\x00\x06" + b"\xb0\x34\xee" + HALT, 0),  # ACPI SLP_TYP 5 | SLP_EN
        (b"\x66\xba\x05\x05" + b"\xb0\x01\xee" + HALT, 14),  # pvpanic PANICKED
        (b"\x0f\x0b", 12),  # ud2 with no IDT: #UD -> #GP -> #DF -> triple fault
    ],
    ids=["i8042-reset", "acpi-reset", "acpi-s5", "pvpanic", "triple-fault"],
)
def test_exit_status_says_how_the_guest_ended(tmp_path: Path, code: bytes, status: int) -> None:
    proc, stats = vmm(tmp_path, code)
    assert proc.returncode == status, proc.stderr
    assert stats["exit_status"] == status
    if status in (10, 12, 14):
        assert len(proc.stderr.splitlines()) == 1  # one line naming the reason


def test_unassigned_port_reads_0xff(tmp_path: Path) -> None:
    proc, stats = vmm(tmp_path, inb(0x80) + DEBUG_EXIT_AL + HALT, "--debug-exit")
    assert proc.returncode == (0xFF << 1 | 1) & 0xFF
    assert stats["io_in_by_port"] == {"0x80": 1}


def test_cmos_reads_the_host_year(tmp_path: Path) -> None:
    proc, _ = vmm(tmp_path, out(0x70, 0x09) + inb(0x71) + DEBUG_EXIT_AL + HALT, "--debug-exit")
    year = time.gmtime().tm_year % 100
    assert proc.returncode == ((int(str(year), 16) << 1) | 1) & 0xFF


def test_serial_echo_from_piped_stdin(tmp_path: Path) -> None:
    echo = bytes.fromhex(
        "66bafd03" "ec" "a801" "74f7"  # L0: wait for LSR.DR
        "66baf803" "ec" "ee"  # read RBR, write it back to THR
        "3c0a" "75ed"  # until newline
    ) + debug_exit(0)
    proc, stats = vmm(tmp_path, echo, "--debug-exit", stdin=b"typed into the guest\n")
    assert proc.stdout == b"typed into the guest\n"
    assert proc.returncode == 1


def test_two_vcpus_ap_waits_for_sipi_and_vm_still_exits(tmp_path: Path) -> None:
    proc, stats = vmm(tmp_path, say(b"smp\n") + debug_exit(2), "--debug-exit", "--cpus", "2")
    assert proc.stdout == b"smp\n" and proc.returncode == 5
    assert len(stats["exits_by_vcpu"]) == 2


def test_hlt_with_interrupts_off_idles_until_sigterm(tmp_path: Path) -> None:
    image = tmp_path / "hlt.bin"
    image.write_bytes(b"\xfa" + HALT)  # cli; hlt
    proc = subprocess.Popen([sys.executable, "-m", "vnix.vmm", "--flat", "--kernel", str(image), "--memory", "64M"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "a halted guest must not end the VMM"
        before = _cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert _cpu_seconds(proc.pid) - before < 0.2, "a halted guest must not burn CPU"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--kernel", "/does/not/exist"],
        ["--kernel", "{img}", "--cpus", "0"],
        ["--kernel", "{img}", "--memory", "lots"],
        ["--kernel", "{img}", "--memory", "1M"],
        ["--no-such-flag"],
        [],
        ["--config", "/does/not/exist.json"],
        ["--config", "{bad_json}"],
        ["--kernel", "{img}"],  # not a bzImage / ELF
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, args: list[str]) -> None:
    img = tmp_path / "img.bin"
    img.write_bytes(b"\x90" * 16)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"kernel": 3, "cpus": "many"')
    argv = [a.format(img=img, bad_json=bad_json) for a in args]
    proc = subprocess.run([sys.executable, "-m", "vnix.vmm", *argv], capture_output=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vnix-vmm: error: "), lines
    assert "Traceback" not in proc.stderr.decode()


# -- cost of an exit ------------------------------------------------------------------------------
def test_exit_loop_counts_every_exit(tmp_path: Path) -> None:
    n = 2000
    loop = b"\xb9" + struct.pack("<I", n) + b"\xe6\x80" + b"\x49" + b"\x75\xfb"  # out 0x80,al; dec ecx; jnz
    proc, stats = vmm(tmp_path, loop + debug_exit(0), "--debug-exit")
    assert proc.returncode == 1
    assert stats["io_out_by_port"]["0x80"] == n
    assert stats["unassigned"]["pio_writes"] == {"0x80": n}


# -- the launcher -------------------------------------------------------------------------------
def test_launcher_argv_is_isolated_from_the_callers_python_environment(tmp_path: Path) -> None:
    from vnix.vmm.launch import vmm_argv

    trap = tmp_path / "trap" / "vnix"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise SystemExit('the caller PYTHONPATH reached the VMM')\n")
    image = tmp_path / "guest.bin"
    image.write_bytes(say(b"isolated\n") + debug_exit(0))
    env = dict(os.environ, PYTHONPATH=str(trap.parent), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(vmm_argv(["--flat", "--kernel", str(image), "--memory", "64M", "--debug-exit"]),
                          env=env, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (1, b"isolated\n"), proc.stderr
    assert proc.stderr == b""


def test_launcher_for_another_interpreter_is_plain_dash_m() -> None:
    from vnix.vmm.launch import vmm_argv

    assert vmm_argv(["--help"], python="/opt/other/python3") == ["/opt/other/python3", "-m", "vnix.vmm", "--help"]


def test_int3_in_guest_kernel_code_reaches_the_guests_breakpoint_handler(tmp_path: Path) -> None:
    # kvm_pvm cannot emulate a ring-0 int3 (KVM_EXIT_INTERNAL_ERROR); the VMM steps over it and
    # injects #BP. On hardware-assisted KVM the CPU does the same by itself: the guest sees one
    # #BP whose saved EIP is the byte after the int3.
    handler, idt, idtr, gdt, gdtr = BASE + 0x100, BASE + 0x200, BASE + 0x300, BASE + 0x340, BASE + 0x360
    main = b"\x0f\x01\x15" + struct.pack("<I", gdtr)  # lgdt [gdtr]: the gate's CS 0x08 must exist
    main += b"\x0f\x01\x1d" + struct.pack("<I", idtr) + b"\xcc"  # lidt [idtr]; int3
    after_int3 = BASE + len(main)
    main += say(b"no #BP\n") + debug_exit(6)
    # The handler checks the saved EIP and ends the test there (no iret: KVM's instruction
    # emulator, which kvm_pvm runs ring-0 code through, handles iret in real mode only).
    fail = say(b"bad eip\n") + debug_exit(5)
    code = say(b"B") + b"\x81\x3c\x24" + struct.pack("<I", after_int3)  # cmp dword [esp], after_int3
    ok = say(b"R\n") + debug_exit(0)
    code += b"\x75" + bytes([len(ok)]) + ok + fail  # jne fail
    gate = struct.pack("<HHBBH", handler & 0xFFFF, 0x08, 0, 0x8E, handler >> 16)  # 32-bit interrupt gate
    image = bytearray(0x370)
    image[0x340:0x358] = struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)  # null, code, data
    image[0x360:0x366] = struct.pack("<HI", 3 * 8 - 1, gdt)
    image[: len(main)] = main
    image[0x100 : 0x100 + len(code)] = code
    image[0x200 + 3 * 8 : 0x200 + 4 * 8] = gate
    image[0x300:0x306] = struct.pack("<HI", 4 * 8 - 1, idt)
    proc, stats = vmm(tmp_path, bytes(image), "--debug-exit")
    assert (proc.returncode, proc.stdout) == (1, b"BR\n"), proc.stderr
    assert stats["exits"].get("int3_injected", 0) <= 1
