"""Turn a :class:`~vnix.vmm.config.MachineConfig` into a QEMU command line: the one place that does.

The QEMU driver (lifecycle, QMP) and ``vnix run --driver qemu`` both call :func:`qemu_argv`, so a
machine looks the same whichever front end started it. The device model follows QEMU's
documentation (``qemu-system-x86_64 -device help``, docs/system/invocation):

* ``-nodefaults -no-user-config``: no default NIC, VGA, floppy, CD-ROM or monitor; only what the
  configuration asks for exists, as with the native VMM.
* disks: ``-drive if=none`` plus ``virtio-blk-pci`` (or ``virtio-blk-device`` on the virtio-mmio
  based ``microvm`` machine), in order: the first disk is ``/dev/vda`` in a Linux guest.
* nets: ``-netdev tap`` (or ``bridge`` through qemu-bridge-helper, or ``user``) plus
  ``virtio-net-pci`` with the configured MAC.
* a virtio balloon and a virtio RNG fed from ``/dev/urandom`` (a guest without them waits for
  entropy and cannot give memory back), unless ``MachineConfig.balloon`` / ``.rng`` turn them
  off (``--balloon off`` / ``--rng off`` on the native VMM: the same device set on both).
* ``-no-reboot``: a guest reboot ends QEMU, as a reboot ends the native VMM (exit status 10 there).

The guest's architecture (``MachineConfig.arch``) picks the emulator and its board
(:data:`TARGETS`): x86_64 guests run on ``qemu-system-x86_64 -machine pc``; aarch64 guests on
``qemu-system-aarch64 -machine virt`` (docs/system/arm/virt.rst: a PL011 UART, which Linux calls
ttyAMA0, a PL031 clock, and a generic PCIe host bridge, so the same ``virtio-*-pci`` devices
serve; Debian's arm64 kernel has the bridge and the UART built in and loads virtio_pci). Under
TCG the aarch64 CPU is a Cortex-A57 (ARMv8.0): ``-cpu max`` would add pointer authentication,
whose QARMA cipher TCG computes in software on every signed return.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vnix.vmm import ConfigError
from vnix.vmm.config import MachineConfig

QEMU_X86 = "qemu-system-x86_64"
QEMU_AARCH64 = "qemu-system-aarch64"


@dataclass(frozen=True)
class QemuTarget:
    """How QEMU emulates one guest architecture."""

    binary: str
    machine: str  # the default board
    tcg_cpu: str | None  # -cpu under TCG; None: QEMU's default model
    package: str  # the Debian package that ships ``binary``
    debug_exit: bool  # the board has an ISA bus for isa-debug-exit


TARGETS: dict[str, QemuTarget] = {
    "x86_64": QemuTarget(QEMU_X86, "pc", None, "qemu-system-x86", True),
    "aarch64": QemuTarget(QEMU_AARCH64, "virt", "cortex-a57", "qemu-system-arm", False),
}


def target(arch: str) -> QemuTarget:
    try:
        return TARGETS[arch]
    except KeyError:
        raise ConfigError(f"QEMU cannot run guest architecture {arch!r} "
                          f"(known: {', '.join(TARGETS)})") from None

# QEMU's isa-debug-exit device: a guest write of v to the port makes QEMU exit with (v << 1) | 1.
DEBUG_EXIT_PORT = 0x501


def _escape(value: str) -> str:
    """QEMU option values are comma separated; a literal comma is written twice."""
    return value.replace(",", ",,")


def _virtio(kind: str, machine: str) -> str:
    """``virtio-blk`` -> ``virtio-blk-pci`` on PCI machines, ``virtio-blk-device`` on microvm."""
    return f"{kind}-device" if machine.startswith("microvm") else f"{kind}-pci"


def qemu_argv(
    config: MachineConfig,
    *,
    accel: Literal["kvm", "tcg"],
    machine: str | None = None,
    serial: str = "stdio",
    qmp_socket: str | None = None,
    vnc: str | None = None,
    extra: Sequence[str] = (),
    binary: str | None = None,
) -> list[str]:
    """The full argv (binary first) that boots ``config`` under QEMU.

    ``machine`` and ``binary`` default to those of the guest's architecture (:data:`TARGETS`).
    ``serial`` is a QEMU chardev spec for the first serial port (``stdio``, ``mon:stdio`` for
    Ctrl-A x / Ctrl-A c on a terminal, ``file:PATH``, ``unix:PATH,server=on,wait=off``, ``none``).
    ``qmp_socket`` is a Unix socket path QEMU listens on for QMP (server, does not wait).
    ``vnc`` is a VNC display (``127.0.0.1:5`` or ``unix:PATH``); without it there is no display.
    ``extra`` is appended verbatim (last word wins in QEMU for most options).
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
    tgt = target(config.arch)
    machine = machine or tgt.machine
    if config.debug_exit and not tgt.debug_exit:
        raise ConfigError(f"isa-debug-exit needs an x86 board; {config.arch} guests have none")
    argv: list[str] = [
        binary or tgt.binary,
        "-nodefaults",
        "-no-user-config",
        "-machine", machine,
        "-accel", accel,
        "-m", f"{config.memory_mib}M",
        "-smp", str(config.cpus),
        "-display", "none",
        "-no-reboot",
    ]
    # KVM: give the guest the host's CPU model; TCG: the target's model (x86: QEMU's default
    # qemu64, which every x86-64 kernel boots and which TCG emulates fully).
    if accel == "kvm":
        argv += ["-cpu", "host"]
    elif tgt.tcg_cpu:
        argv += ["-cpu", tgt.tcg_cpu]
    argv += ["-kernel", config.kernel]
    if config.initrd:
        argv += ["-initrd", config.initrd]
    if config.cmdline:
        argv += ["-append", config.cmdline]
    argv += ["-serial", serial]

    for i, disk in enumerate(config.disks):
        drive = f"file={_escape(disk.path)},if=none,id=disk{i},format={disk.format}"
        if disk.readonly:
            drive += ",readonly=on"
        argv += ["-drive", drive, "-device", f"{_virtio('virtio-blk', machine)},drive=disk{i}"]

    for i, net in enumerate(config.nets):
        if net.kind == "user":
            netdev = f"user,id=net{i}"
        elif net.kind == "bridge" or (net.kind == "tap" and net.bridge and not net.name):
            netdev = f"bridge,id=net{i},br={_escape(net.bridge or 'br0')}"
        else:
            netdev = f"tap,id=net{i},script=no,downscript=no"
            if net.name:
                netdev += f",ifname={_escape(net.name)}"
        device = f"{_virtio('virtio-net', machine)},netdev=net{i}"
        if net.mac:
            device += f",mac={net.mac}"
        argv += ["-netdev", netdev, "-device", device]

    if config.balloon:
        argv += ["-device", _virtio("virtio-balloon", machine)]
    if config.rng:
        argv += [
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", f"{_virtio('virtio-rng', machine)},rng=rng0",
        ]
    if config.debug_exit:
        argv += ["-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x1"]
    if qmp_socket:
        argv += ["-qmp", f"unix:{_escape(qmp_socket)},server=on,wait=off"]
    if vnc:
        argv += ["-vnc", vnc]
    argv += list(extra)
    return argv
