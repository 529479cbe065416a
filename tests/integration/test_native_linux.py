"""The tiny image's Linux kernel on the native VMM, as far as this host's KVM lets it go.

On a software-nested host (kvm_pvm) guest kernel code is emulated, ~1000x slower: the kernel
needs ~200-230 s to reach console start-up and does not reach user space
(notes/kvm-on-these-machines.md). What it logs on the way shows what the VMM handed it: the
e820 map, the command line, the initrd. One slow test; its wall time is printed.
"""
from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vnix.images import UnknownImageError
from vnix.images.store import GuestImage, load_image
from vnix.vmm.arch.x86.hostcpu import host_is_software_nested, linux_cmdline_workarounds
from vnix.vmm.arch.x86.layout import MiB, e820_map
from vnix.vmm.launch import vmm_argv

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
]

MEMORY_MIB = 256
CMDLINE = "console=ttyS0 earlyprintk=ttyS0 panic=-1 vnix.test=native"
CONSOLE_UP = re.compile(rb"(printk: )?console \[ttyS0\] enabled")
DEADLINE_S = 540.0


@pytest.fixture(scope="module")
def tiny() -> GuestImage:
    try:
        return load_image("tiny")
    except UnknownImageError:
        build = subprocess.run([sys.executable, "-m", "vnix", "image", "build", "tiny"],
                               capture_output=True, text=True, timeout=1800)
        assert build.returncode == 0, build.stderr[-2000:]
        return load_image("tiny")


def _boot_until_console(image: GuestImage) -> tuple[bytes, bytes, float]:
    """Run the VMM until the kernel enables ttyS0 (or the deadline); return stdout, stderr, wall s."""
    argv = vmm_argv(["--kernel", str(image.kernel), "--initrd", str(image.initrd), "--cmdline", CMDLINE,
                     "--memory", f"{MEMORY_MIB}M", "--cpus", "1"])
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    try:
        while sel.get_map() and time.monotonic() - start < DEADLINE_S and not CONSOLE_UP.search(out):
            for key, _ in sel.select(1.0):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.extend(chunk)
                else:
                    sel.unregister(key.fileobj)
        wall = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sel.close()
    return bytes(out), bytes(err), wall


def test_linux_reaches_console_start_up_with_what_the_vmm_gave_it(tiny: GuestImage) -> None:
    out, err, wall = _boot_until_console(tiny)
    log = out.decode("utf-8", "replace")
    reached = CONSOLE_UP.search(out) is not None
    print(f"\nnative VMM: Linux {'reached console start-up after' if reached else 'ran'} {wall:.1f} s wall time")
    assert reached, f"no console start-up in {wall:.0f} s; last output:\n{log[-3000:]}\n{err[-2000:]!r}"

    # the e820 map: every entry the VMM wrote, as Linux prints it
    for entry in e820_map(MEMORY_MIB * MiB):
        kind = "usable" if entry.type == 1 else "reserved"
        line = f"BIOS-e820: [mem {entry.addr:#018x}-{entry.addr + entry.size - 1:#018x}] {kind}"
        assert line in log, f"{line!r} not in the kernel's e820 report"

    # the command line, with this host's workarounds (and the VMM saying so on stderr)
    extra = linux_cmdline_workarounds(host_is_software_nested())
    assert f"Command line: {' '.join([CMDLINE, *extra])}" in log
    assert (b"software-nested KVM (kvm_pvm)" in err) == bool(extra)

    # the initrd: where the VMM put it, page-aligned, as large as the file
    m = re.search(r"RAMDISK: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]", log)
    assert m, "the kernel did not report an initrd"
    start, end = int(m.group(1), 16), int(m.group(2), 16)
    size = Path(tiny.initrd).stat().st_size
    assert start % 4096 == 0 and end + 1 - start == (size + 4095) // 4096 * 4096
