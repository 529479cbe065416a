"""``vnix run``: boot a guest with its serial console on the terminal, or run one command in it.

    vnix run --image tiny                       a shell on the guest's console (Ctrl-A x quits)
    vnix run --image tiny --cpus 2 -- nproc     boot, run nproc, print its output, exit with its
                                                status (like ``docker run``)

The driver is the native VMM where KVM is hardware-assisted and QEMU with TCG elsewhere
(:func:`vnix.host.recommended_driver`); ``--driver``/``--accel`` override it. A guest of another
instruction set (``--image tiny-arm64``, or an arm64 ``--kernel``) always runs on QEMU with TCG.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

import typer

from vnix.cli.main import app, err_console
from vnix.errors import UsageError, VnixError
from vnix.vmm import BootError, ConfigError
from vnix.vmm.config import DiskConfig, MachineConfig, parse_size_mib

# Below this a stock Debian kernel with the tiny initramfs runs out of memory while unpacking.
LINUX_MIN_MEMORY_MIB = 64
# What the kernel needs besides the initrd while it unpacks it (kernel image, page tables, slab).
_LINUX_OVERHEAD_MIB = 48


def kernel_format(path: str) -> Literal["bzImage", "elf", "arm64-image"]:
    """Check the kernel's magic before any VMM sees it (vnix.images.bootkernel): an x86
    bzImage, an ELF (PVH entry or vmlinux), or an arm64 Image."""
    from vnix.images import ImageError
    from vnix.images.bootkernel import read_kind

    try:
        kind = read_kind(path)
    except ImageError as exc:
        raise BootError(str(exc)) from None
    if kind in ("bzImage", "elf", "arm64-image"):
        return kind  # type: ignore[return-value]
    raise BootError(f"kernel {path} is neither a bzImage, an ELF file nor an arm64 Image "
                    "(bad magic)")


def check_linux_fit(config: MachineConfig) -> None:
    """A Linux guest needs room for itself and its unpacked initrd."""
    if config.memory_mib < LINUX_MIN_MEMORY_MIB:
        raise ConfigError(f"--memory {config.memory_mib}M is too small for a Linux guest "
                          f"(at least {LINUX_MIN_MEMORY_MIB}M)")
    if config.initrd:
        initrd_mib = -(-os.path.getsize(config.initrd) // (1024 * 1024))
        kernel_mib = -(-os.path.getsize(config.kernel) // (1024 * 1024))
        need = initrd_mib * 2 + kernel_mib + _LINUX_OVERHEAD_MIB  # archive + unpacked copy
        if need > config.memory_mib:
            raise ConfigError(f"initrd {config.initrd} ({initrd_mib} MiB) does not fit in "
                              f"--memory {config.memory_mib}M (needs about {need}M)")


def _choose_driver(driver: str | None, accel: str | None,
                   arch: str = "x86_64") -> tuple[str, str | None, str]:
    """(driver, accel, reason line) from the flags, the guest's architecture and the host."""
    from vnix.host import recommended_driver
    from vnix.hypervisor.accel import host_isa

    if driver not in (None, "native", "qemu"):
        raise UsageError(f"--driver must be native or qemu, not {driver!r}")
    if accel not in (None, "kvm", "tcg"):
        raise UsageError(f"--accel must be kvm or tcg, not {accel!r}")
    if driver == "native" and accel == "tcg":
        raise UsageError("--accel tcg needs --driver qemu (the native VMM runs on KVM only)")
    if arch != host_isa():
        if driver == "native" or accel == "kvm":
            what, flag = (("the native VMM", "--driver native") if driver == "native"
                          else ("KVM", "--accel kvm"))
            raise UsageError(f"an {arch} guest cannot run on {what} of this {host_isa()} host: "
                             f"it runs on QEMU with TCG (drop {flag})")
        return "qemu", "tcg", f"vnix: using QEMU with TCG: an {arch} guest on an {host_isa()} host"
    if driver is None and accel is not None:
        driver = "qemu"
    if driver == "native":
        return "native", None, "vnix: using the native VMM (--driver native)"
    rec, why = recommended_driver()
    if driver == "qemu":
        chosen = accel or ("kvm" if rec == "native" else "tcg")
        return "qemu", chosen, f"vnix: using QEMU with {chosen.upper()}"
    if rec == "native":
        return "native", None, f"vnix: using the native VMM: {why}"
    return "qemu", "tcg", f"vnix: using QEMU with TCG: {why}"


def _native_argv(config: MachineConfig, workdir: Path, stats_path: str | None) -> list[str]:
    """``python -m vnix.vmm --config FILE --disk ...``: the MachineConfig's JSON is the VMM's
    wire format; the disks go as ``--disk`` flags, in order (the root disk first: /dev/vda), so
    that they show in the process list as QEMU's ``-drive`` do."""
    flags: list[str] = []
    for d in config.disks:
        if "," in d.path:
            raise UsageError(f"--disk {d.path}: a path with a comma cannot be passed to the VMM")
        flags += ["--disk", f"{d.path},format={d.format}" + (",readonly=on" if d.readonly else "")]
    wire = MachineConfig.from_json(config.to_json())
    wire.disks = []
    config_path = workdir / "machine.json"
    config_path.write_text(wire.to_json())
    from vnix.vmm.launch import vmm_argv

    argv = vmm_argv(["--config", str(config_path), *flags])
    if stats_path:
        argv += ["--stats-json", stats_path]
    return argv


def _overlay(base: Path, directory: Path) -> str:
    """A qcow2 overlay over the raw image ``base`` (qemu-img create -b), in ``directory``."""
    overlay = directory / "rootfs.qcow2"
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                        str(overlay)], check=True, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise UsageError("qemu-img not found: install qemu-utils") from None
    except subprocess.CalledProcessError as exc:
        raise VnixError(f"qemu-img create failed: {exc.stderr.strip()}") from None
    return str(overlay)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def run(
    ctx: typer.Context,
    image: str = typer.Option("tiny", "--image", help="Image to boot (tiny, tiny-arm64)."),
    cpus: int = typer.Option(1, "--cpus", help="Number of vCPUs."),
    memory: str = typer.Option("256M", "--memory", help="Guest memory (256M, 4G, ...)."),
    kernel: str | None = typer.Option(None, "--kernel", help="Kernel (bzImage or ELF) instead of the image's."),
    initrd: str | None = typer.Option(None, "--initrd", help="Initramfs instead of the image's."),
    cmdline: str | None = typer.Option(None, "--cmdline", help="Kernel command line instead of the image's."),
    disk: list[str] = typer.Option([], "--disk", help="Extra disk image (raw or qcow2); repeatable."),
    driver: str | None = typer.Option(None, "--driver", help="native or qemu (default: by host)."),
    accel: str | None = typer.Option(None, "--accel", help="kvm or tcg (QEMU driver)."),
    stats: bool = typer.Option(False, "--stats", help="Print timings (and VMM exit counters)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Kill the VM after this many seconds."),
    api_sock: str | None = typer.Option(None, "--api-sock", help="Serve the native VMM's control API on this "
                                        "Unix socket (vnix vmm ... --api-sock PATH)."),
    fast: bool = typer.Option(False, "--fast", help="Native VMM: start from a saved booted state of this kernel/"
                              "image and machine (built once under $VNIX_HOME/faststart, rebuilt when they "
                              "change) instead of booting."),
) -> None:
    """Boot a guest on this terminal; with `-- CMD ARGS` run CMD in it and exit with its status."""
    from vnix.console.session import attach, run_command
    from vnix.hypervisor.qemu_cmdline import qemu_argv
    from vnix.images.guest_init import check_cmdline, encode_command
    from vnix.images.store import load_image

    command = list(ctx.args)
    config = MachineConfig(kernel="", memory_mib=parse_size_mib(memory), cpus=cpus)
    img = load_image(image) if not (kernel and initrd is not None) else None
    config.kernel = kernel or str(img.kernel if img else "")
    config.initrd = initrd if initrd is not None else (str(img.initrd) if img else None)
    config.initrd = config.initrd or None
    base = cmdline if cmdline is not None else (img.cmdline if img else "console=ttyS0 panic=-1")
    use_rootfs = bool(img and img.rootfs and not kernel)
    for path in disk:
        fmt = "qcow2" if path.endswith(".qcow2") else "raw"
        config.disks.append(DiskConfig(path, format=fmt))
    if command:
        base = f"{base} {encode_command(command)}"
    config.cmdline = base.strip()
    if os.path.isfile(config.kernel):  # (validate() reports a missing one)
        # the kernel's format says which instruction set the guest is
        config.arch = "aarch64" if kernel_format(config.kernel) == "arm64-image" else "x86_64"
    config.validate()
    fmt = kernel_format(config.kernel)
    if fmt in ("bzImage", "arm64-image"):
        check_linux_fit(config)
    check_cmdline(config.cmdline)

    chosen, chosen_accel, reason = _choose_driver(driver, accel, config.arch)
    if api_sock is not None:
        if chosen != "native":
            raise UsageError("--api-sock needs the native VMM (--driver native): QEMU has QMP instead")
        api_sock = os.path.abspath(api_sock)
        if not os.path.isdir(os.path.dirname(api_sock)) or len(api_sock.encode()) > 107:
            raise UsageError(f"--api-sock {api_sock}: no such directory, or too long for a Unix socket")
    if fast:
        if chosen != "native":
            raise UsageError("--fast needs the native VMM (--driver native): it restores a snapshot")
        if command:
            raise UsageError("--fast cannot run a command: the command is part of the boot it skips")
        if disk:
            raise UsageError("--fast cannot be used with --disk: a saved state holds the guest's view of its "
                             "disks, which the files may no longer match")
    err_console.print(reason, markup=False)
    workdir = tempfile.TemporaryDirectory(prefix="vnix-run-")
    if use_rootfs and img and img.rootfs and not fast:
        # Like a container's writable layer: the guest writes to a throwaway qcow2 overlay, so
        # the image stays pristine and two guests never share one writable ext4. The same with
        # either driver: the native VMM's virtio-blk reads qcow2 overlays over a raw base too.
        # (On a host whose KVM only emulates guest kernel code, as kvm_pvm does, a Linux boot on
        # the native VMM does not get as far as mounting it: that needs hardware-assisted KVM.)
        config.disks.insert(0, DiskConfig(_overlay(img.rootfs, Path(workdir.name)), format="qcow2"))
    stats_path: str | None = None
    if fast:
        from vnix.vmm.faststart import prepare

        rootfs = str(img.rootfs) if use_rootfs and img and img.rootfs else None
        try:
            argv = prepare(config, rootfs, Path(workdir.name))
        except BaseException:
            workdir.cleanup()
            raise
        if stats:
            stats_path = str(Path(workdir.name) / "stats.json")
            argv += ["--stats-json", stats_path]
        if api_sock is not None:
            argv += ["--api-sock", api_sock]
    elif chosen == "native":
        if stats:
            stats_path = str(Path(workdir.name) / "stats.json")
        argv = _native_argv(config, Path(workdir.name), stats_path)
        if api_sock is not None:
            argv += ["--api-sock", api_sock]
    else:
        argv = qemu_argv(config, accel=chosen_accel or "tcg",  # type: ignore[arg-type]
                         serial="stdio" if command else "mon:stdio")

    # SIGTERM (systemd, timeout(1)) ends us through the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if command:
            result = run_command(argv, timeout=timeout)
        else:
            result = attach(argv, watch=stats)
        counters: dict[str, object] = {}
        if stats_path and Path(stats_path).is_file():
            counters = json.loads(Path(stats_path).read_text())
    finally:
        workdir.cleanup()
    if stats:
        for line in result.timings.lines():
            err_console.print(f"vnix: stats: {line}", markup=False)
        exits = counters.get("exits")
        if isinstance(exits, dict):
            err_console.print(f"vnix: stats: VM exits total {counters.get('exits_total', '-')}",
                              markup=False)
            for key, value in sorted(exits.items()):
                err_console.print(f"vnix: stats: exits {key:<24} {value}", markup=False)
    if command:
        if result.command_status is None:
            err_console.print(f"vnix: error: the guest ended before the command finished "
                              f"(VM exit status {result.process_status}): {result.failure_hint()}",
                              markup=False)
            sys.exit(1)
        sys.exit(result.command_status)
    sys.exit(0 if result.process_status in (0,) else result.process_status)
