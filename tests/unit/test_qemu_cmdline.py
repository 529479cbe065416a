"""qemu_argv: the MachineConfig -> QEMU command line mapping."""
from __future__ import annotations

import pytest

from vnix.hypervisor.qemu_cmdline import qemu_argv
from vnix.vmm.config import DiskConfig, MachineConfig, NetConfig


def _opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_basic_machine() -> None:
    cfg = MachineConfig(kernel="/k/vmlinuz", initrd="/k/initrd", cmdline="console=ttyS0 quiet",
                        memory_mib=4096, cpus=2)
    argv = qemu_argv(cfg, accel="tcg")
    assert argv[0] == "qemu-system-x86_64"
    assert _opt(argv, "-m") == ["4096M"]
    assert _opt(argv, "-smp") == ["2"]
    assert _opt(argv, "-kernel") == ["/k/vmlinuz"]
    assert _opt(argv, "-initrd") == ["/k/initrd"]
    assert _opt(argv, "-append") == ["console=ttyS0 quiet"]  # one argv word, spaces kept
    assert _opt(argv, "-accel") == ["tcg"]
    assert _opt(argv, "-machine") == ["pc"]
    assert _opt(argv, "-serial") == ["stdio"]
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert "-cpu" not in argv  # TCG keeps QEMU's default model
    assert "-qmp" not in argv and "-vnc" not in argv


def test_kvm_uses_host_cpu_and_no_initrd_or_append_when_absent() -> None:
    argv = qemu_argv(MachineConfig(kernel="/k"), accel="kvm")
    assert _opt(argv, "-cpu") == ["host"]
    assert "-initrd" not in argv and "-append" not in argv


def test_disks_in_order_with_format_readonly_and_comma_escaping() -> None:
    cfg = MachineConfig(kernel="/k", disks=[DiskConfig("/d/root.ext4"),
                                            DiskConfig("/d/a,b.qcow2", readonly=True, format="qcow2")])
    argv = qemu_argv(cfg, accel="tcg")
    assert _opt(argv, "-drive") == [
        "file=/d/root.ext4,if=none,id=disk0,format=raw",
        "file=/d/a,,b.qcow2,if=none,id=disk1,format=qcow2,readonly=on",
    ]
    devices = _opt(argv, "-device")
    assert devices.index("virtio-blk-pci,drive=disk0") < devices.index("virtio-blk-pci,drive=disk1")


def test_nets_tap_bridge_user_with_mac() -> None:
    cfg = MachineConfig(kernel="/k", nets=[
        NetConfig(name="vnixtap0", mac="52:54:00:00:00:01"),
        NetConfig(kind="bridge", bridge="vnixbr0"),
        NetConfig(kind="user"),
    ])
    argv = qemu_argv(cfg, accel="tcg")
    assert _opt(argv, "-netdev") == [
        "tap,id=net0,script=no,downscript=no,ifname=vnixtap0",
        "bridge,id=net1,br=vnixbr0",
        "user,id=net2",
    ]
    devices = _opt(argv, "-device")
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01" in devices
    assert "virtio-net-pci,netdev=net1" in devices


def test_microvm_uses_virtio_mmio_devices() -> None:
    cfg = MachineConfig(kernel="/k", disks=[DiskConfig("/d")])
    devices = _opt(qemu_argv(cfg, accel="tcg", machine="microvm"), "-device")
    assert "virtio-blk-device,drive=disk0" in devices
    assert not any(d.endswith("-pci") or "-pci," in d for d in devices)


def test_qmp_vnc_serial_debug_exit_and_extra() -> None:
    cfg = MachineConfig(kernel="/k", debug_exit=True)
    argv = qemu_argv(cfg, accel="tcg", serial="mon:stdio", qmp_socket="/run/q.sock",
                     vnc="127.0.0.1:5", extra=["-S"])
    assert _opt(argv, "-qmp") == ["unix:/run/q.sock,server=on,wait=off"]
    assert _opt(argv, "-vnc") == ["127.0.0.1:5"]
    assert _opt(argv, "-serial") == ["mon:stdio"]
    assert "isa-debug-exit,iobase=0x501,iosize=0x1" in _opt(argv, "-device")
    assert argv[-1] == "-S"


def test_bad_accel_refused() -> None:
    with pytest.raises(ValueError):
        qemu_argv(MachineConfig(kernel="/k"), accel="hvf")  # type: ignore[arg-type]


@pytest.mark.parametrize("rng,balloon", [(True, True), (True, False), (False, True), (False, False)])
def test_rng_and_balloon_follow_the_config(rng: bool, balloon: bool) -> None:
    """``--rng off`` / ``--balloon off`` mean the same device set under QEMU as on the native VMM."""
    cfg = MachineConfig(kernel="/k", rng=rng, balloon=balloon)
    devices = _opt(qemu_argv(cfg, accel="tcg"), "-device")
    assert any(d.startswith("virtio-balloon") for d in devices) == balloon
    assert any(d.startswith("virtio-rng") for d in devices) == rng
    assert ("rng-random,id=rng0,filename=/dev/urandom" in _opt(qemu_argv(cfg, accel="tcg"), "-object")) == rng
