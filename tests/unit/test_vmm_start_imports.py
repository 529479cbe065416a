"""The VMM's start path stays lean: no ``dataclasses``, ``typing``, ``enum``, ``re`` or ``json``
before the guest runs (issue 2's start-up figures; each costs 1-7 ms of a ~40 ms start).

The path checked is the plain boot of a test-kit guest with the device set of QEMU microvm
(``--rng off --balloon off``: no PCI/virtio code), as ``benchmarks/boot.py`` runs it. The VMM
runs in a subprocess started the way every launcher starts it (``vnix.vmm.launch``), and its
``sys.modules`` is inspected there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vnix.testkit import guest_path
from vnix.testkit.runner import DEBUG_EXIT_OK, TESTKIT_DIR
from vnix.vmm.launch import bootstrap_code

#: modules the start path must not import (what each costs the VMM's start-up, roughly):
#: dataclasses ~7 ms (inspect, ast, dis), typing ~5 ms (re, contextlib), enum ~1.5 ms,
#: re ~2.5 ms, json ~1 ms
FORBIDDEN = ("dataclasses", "typing", "enum", "re", "json")
NO_VIRTIO = ["--rng", "off", "--balloon", "off"]
ELF = guest_path("boot")
needs_guest = pytest.mark.skipif(not ELF.exists(), reason="test-kit guests not built (make -C guests/testkit)")


def _vmm_args(elf: Path) -> list[str]:
    return ["--kernel", str(elf), "--memory", "128M", "--cpus", "1", "--debug-exit", *NO_VIRTIO]


def _run(program: str, args: list[str], *, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``program`` in a VMM-like interpreter (``-I -S``, vnix's bootstrap ``sys.path``); it ends
    by writing ``MODULES <names>`` to stderr."""
    boot = bootstrap_code().replace("from vnix.vmm.__main__ import entry;entry()", "")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", boot + "\n" + program, *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES ")]
    assert lines, f"no module list (status {proc.returncode}): {proc.stderr[-2000:]}"
    return proc, set(lines[-1].split()[1:])


_DUMP = "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n'); sys.stderr.flush()"
#: the real VMM, its ``sys.modules`` written as it ends (``os._exit`` wrapped): the whole run counts
_WHOLE_RUN = f"""
import os
_exit = os._exit
def _dump_and_exit(status):
    {_DUMP}
    _exit(status)
os._exit = _dump_and_exit
from vnix.vmm.__main__ import entry
entry()
"""


@needs_guest
def test_the_boot_path_imports_nothing_heavy_without_kvm() -> None:
    """Everything the boot imports, run as far as it goes without /dev/kvm: the command line,
    the config, the machine and devices, the stats, guest RAM and the kernel loader (which
    imports the ELF/PVH/ACPI/MP-table code), and the modules ``Machine.build`` imports later."""
    program = f"""
from vnix.vmm.__main__ import config_from_args, parse_args, socket_paths
from vnix.vmm.stats import Stats
stats = Stats(0.0)
args = parse_args(sys.argv[1:])
socket_paths(args)
config = config_from_args(args)
assert not config.rng and not config.balloon
from vnix.vmm import machine
from vnix.vmm.memory import GuestMemory
mem = GuestMemory(machine.ram_layout(config.memory_mib << 20))
machine.linux_loader(mem, config.kernel, config.initrd, config.cmdline, config.cpus)
import vnix.kvm.vm, vnix.vmm.arch.x86.cpuid, vnix.vmm.arch.x86.msrs, vnix.vmm.arch.x86.layout
{_DUMP}
"""
    proc, modules = _run(program, _vmm_args(ELF))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vnix.vmm.arch.x86.boot" in modules and "vnix.vmm.machine" in modules
    heavy = sorted(set(FORBIDDEN) & modules)
    assert not heavy, f"the VMM's start path imports {heavy}"


@needs_guest
@pytest.mark.kvm
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_a_whole_boot_imports_nothing_heavy() -> None:
    """The real VMM boots the ``boot`` guest to its debug-exit; ``sys.modules`` is read as it
    ends (``os._exit`` wrapped), so the whole run counts, not only the start."""
    proc, modules = _run(_WHOLE_RUN, _vmm_args(ELF))
    assert proc.returncode == DEBUG_EXIT_OK, proc.stderr[-2000:]
    assert "vnix.vmm.vcpu" in modules
    heavy = sorted(set(FORBIDDEN) & modules)
    assert not heavy, f"booting a test-kit guest imports {heavy}"


#: what a machine with virtio devices must not import either, in its whole run (boot, control
#: API, snapshot) and in a restore: the device state classes are Records and the interfaces
#: type-checker-only Protocols, so neither ``dataclasses`` (~7 ms, and ~1 ms a class) nor
#: ``typing`` is paid for (a snapshot needs ``json`` for the saved state; ``re`` and ``enum``
#: come with it)
FORBIDDEN_VIRTIO = ("dataclasses", "typing")


@needs_guest
@pytest.mark.kvm
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_a_boot_with_virtio_devices_and_its_restore_import_nothing_heavy(tmp_path: Path) -> None:
    """The ``idle`` guest with a qcow2 disk, rng, balloon and vsock (virtio-pci, MSI-X, device
    threads) is snapshotted through the control API, then restored in a new VMM process: both
    processes' ``sys.modules`` as they end."""
    import shutil
    import time
    from collections.abc import Callable

    from vnix.vmm.api.client import VmmClient

    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-img")
    idle = TESTKIT_DIR / "build" / "idle.elf"
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    api, snap = tmp_path / "api.sock", tmp_path / "s.snap"
    args = ["--kernel", str(idle), "--memory", "64M", "--disk", f"{disk},format=qcow2",
            "--vsock", f"cid=5,uds={tmp_path / 'v.sock'}", "--api-sock", str(api)]

    def whole_run(vmm_args: list[str], act: Callable[[VmmClient], object]) -> set[str]:
        """A VMM with the API socket ``api``: ``act`` on it once it serves, then its modules."""
        boot = bootstrap_code().replace("from vnix.vmm.__main__ import entry;entry()", "")
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", boot + "\n" + _WHOLE_RUN, *vmm_args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            deadline = time.monotonic() + 30
            while not api.exists():
                assert time.monotonic() < deadline and proc.poll() is None, "the VMM did not start"
                time.sleep(0.05)
            act(VmmClient(str(api)))
            VmmClient(str(api)).stop(graceful=False)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        return set([ln for ln in err.splitlines() if ln.startswith("MODULES ")][-1].split()[1:])

    def snapshot(client: VmmClient) -> None:
        time.sleep(0.3)
        client.snapshot(str(snap), resume=True)

    booted = whole_run(args, snapshot)
    assert "vnix.vmm.devices.pci.virtio_pci" in booted and "vnix.vmm.devices.virtio.vsock.device" in booted
    assert not sorted(set(FORBIDDEN_VIRTIO) & booted), f"a boot with virtio devices imports {sorted(set(FORBIDDEN_VIRTIO) & booted)}"

    modules = whole_run(["--restore", str(snap), "--memory-backing", "private-mmap", "--api-sock", str(api)],
                        lambda client: None)
    assert "vnix.vmm.snapshot.restore" in modules
    heavy = sorted(set(FORBIDDEN_VIRTIO) & modules)
    assert not heavy, f"restoring a machine with virtio devices imports {heavy}"
