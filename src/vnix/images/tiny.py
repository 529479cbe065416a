"""``vnix image build tiny`` / ``tiny-arm64``: the small Linux guest, from Debian's packages.

The same builder serves every architecture of :mod:`vnix.images.arches`; ``tiny`` is the
x86_64 guest, ``tiny-arm64`` the aarch64 one (booted by qemu-system-aarch64 under TCG).
Steps (each one reported to ``on_step``; the CLI shows them as a progress bar):

1. resolve   which kernel package ``linux-image-<arch>`` depends on now, and busybox-static's
             version (``apt-cache``; another architecture's through a private apt state, see
             vnix.images.debian); hash them with this builder's own source. If the manifest
             already holds that hash and the files exist, stop: the image is up to date.
2. download  ``apt-get download`` both packages into a temporary directory (nothing installed).
3. unpack    ``dpkg-deb -x`` both.
4. modules   the virtio, vsock and ext4 modules and their dependencies, read from the .ko
             files (vnix.images.kmod), decompressed, in load order.
5. initramfs our own cpio "newc" writer: busybox and its applet links, /init, the modules,
             the device nodes /dev/console, /dev/null and the console port (no root needed)
             and /sbin/vnix-identity, the clone identity agent (guest/vnix_identity.c), compiled
             here with the host's ``gcc -static -Os`` when the guest is the host's architecture
             (an image of another one goes without: /init then announces no identity port).
             The archive is left uncompressed: on a host whose KVM emulates guest kernel code,
             inflating it would cost the kernel more than reading the extra megabytes. A
             foreign busybox cannot run here to list its applets: /init links them at boot.
6. rootfs    an ext4 disk made with ``mkfs.ext4 -d`` from a directory (no loop device, no
             root) carrying the same busybox and init; the initramfs switches to it.
7. install   files are moved into ``$VNIX_HOME/images/<name>`` with the manifest written last.
             The kernel is stored in the form the board boots directly (bzImage; arm64 Image,
             unpacked if it came gzip or EFI-zboot compressed).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vnix.images import ImageError, arches, bootkernel, cpio, guest_init, kmod
from vnix.images.arches import GuestArch
from vnix.images.debian import Apt, Package, download, resolve_inputs, unpack
from vnix.images.store import image_dir, read_manifest, vnix_home

BUILDER_VERSION = 1
IDENTITY_SOURCE = Path(__file__).with_name("guest") / "vnix_identity.c"
IDENTITY_PATH = "sbin/vnix-identity"  # in the initramfs and on the root disk
ROOTFS_MIB = 64

# Kernel command line of the x86_64 guest (each architecture's: GuestArch.cmdline).
TINY_CMDLINE = arches.X86_64.cmdline

# What the devices of both drivers need (virtio-pci and virtio-mmio transports, block, net,
# balloon, rng, vsock) and the root disk's file system. crc32c_generic: ext4's metadata
# checksums (mkfs.ext4's default) need a crc32c implementation that loads on any CPU.
# button + evdev: the ACPI power button as /dev/input/event* for busybox acpid (both are
# modules in Debian's kernel; see guest_init.POWER_SCRIPT).
MODULES = [
    "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_balloon", "virtio_rng",
    "vsock", "vmw_vsock_virtio_transport", "crc32c_generic", "ext4", "button", "evdev",
]

STEPS = ["resolve", "download", "unpack", "modules", "initramfs", "rootfs", "install"]

_ETC = {
    "etc/passwd": "root::0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "vnix\n",
    "etc/profile": 'export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nPS1="$(hostname):\\w# "\n',
    "etc/fstab": "",
}
_DIRS = ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root",
         "mnt", "lib/modules"]


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    up_to_date: bool  # nothing was rebuilt
    seconds: float
    manifest: dict[str, object]


def builder_fingerprint() -> str:
    """This builder's version: its own source, so a changed /init or module list rebuilds."""
    h = hashlib.sha256(f"builder {BUILDER_VERSION}\n".encode())
    for mod in (cpio, kmod, guest_init, arches, bootkernel):
        h.update(Path(mod.__file__ or "").read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(IDENTITY_SOURCE.read_bytes())
    return h.hexdigest()[:16]


def inputs_hash(kernel: Package, busybox: Package, arch: str = "x86_64") -> str:
    text = json.dumps({"arch": arch, "kernel": [kernel.name, kernel.version],
                       "busybox": [busybox.name, busybox.version],
                       "builder": builder_fingerprint()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _applets(busybox: Path, arch: GuestArch) -> list[str]:
    """``bin/sh``-style paths of every applet, from the binary itself (static, runs here).

    A busybox of another architecture does not run here: then only ``bin/sh`` (what the
    kernel needs to start /init), and /init makes the other links with ``--install -s``."""
    if arch.name != arches.host_arch():
        return ["bin/sh"]
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"cannot list busybox applets: {exc}") from None
    return [line.strip() for line in out.splitlines() if line.strip()]


def build_identity_agent(out: Path) -> None:
    """Compile guest/vnix_identity.c into the static binary ``out`` (the host's gcc and libc.a;
    Debian: gcc, libc6-dev). Raises ImageError with one line naming what is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc not found: the tiny image's identity agent is compiled at build time "
                         "(apt-get install gcc libc6-dev)")
    try:
        res = subprocess.run([gcc, "-static", "-Os", "-s", "-Wall", "-o", str(out),
                              str(IDENTITY_SOURCE)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"cannot run gcc for the identity agent: {exc}") from None
    if res.returncode != 0:
        err = res.stderr
        if "cannot find -lc" in err or "crt1.o" in err or ".h: No such file" in err:
            raise ImageError("cannot compile the identity agent statically: the C library's "
                             "headers or libc.a are missing (apt-get install libc6-dev)")
        first = next((ln for ln in err.splitlines() if "error" in ln), err.strip()[:200])
        raise ImageError(f"gcc failed on {IDENTITY_SOURCE.name}: {first.strip()}")


def _write_initramfs(out: Path, busybox: bytes, applets: list[str],
                     modules: list[tuple[str, bytes]], arch: GuestArch,
                     identity: bytes | None = None) -> None:
    with out.open("wb") as f, cpio.CpioWriter(f) as w:
        for d in _DIRS:
            w.dir(d)
        w.chardev("dev/console", 5, 1)  # Documentation/admin-guide/devices.txt
        w.chardev("dev/null", 1, 3, 0o666)
        w.chardev(f"dev/{arch.console}", *arch.console_node)
        w.file("bin/busybox", busybox, 0o755)
        for path in applets:
            if path != "bin/busybox":
                w.symlink(path, "/bin/busybox")
        for path, text in _ETC.items():
            w.file(path, text.encode())
        w.file("init", guest_init.INIT_SCRIPT.encode(), 0o755)
        if identity is not None:
            w.file(IDENTITY_PATH, identity, 0o755)
        for name, data in modules:
            w.file(f"lib/modules/{name}.ko", data)
        w.file("lib/modules/load-order", "".join(f"{n}\n" for n, _ in modules).encode())


def _write_rootfs(out: Path, tree: Path, busybox: Path, applets: list[str],
                  identity: Path | None = None) -> None:
    for d in _DIRS:
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, tree / "bin/busybox")
    for path in applets:
        if path != "bin/busybox":
            link = tree / path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for path, text in _ETC.items():
        (tree / path).write_text(text)
    init = tree / "sbin/init"
    if init.is_symlink():
        init.unlink()
    init.write_text(guest_init.INIT_SCRIPT)
    init.chmod(0o755)
    if identity is not None:
        shutil.copyfile(identity, tree / IDENTITY_PATH)
        (tree / IDENTITY_PATH).chmod(0o755)
    (tree / "root/README").write_text("vnix tiny guest root disk\n")
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "vnix-root", "-E", "root_owner=0:0",
             "-d", str(tree), str(out), f"{ROOTFS_MIB}M"],
            capture_output=True, text=True, check=True, timeout=120,
        )
    except FileNotFoundError:
        raise ImageError("mkfs.ext4 not found: install e2fsprogs") from None
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"mkfs.ext4 failed: {exc.stderr.strip()}") from None


def apt_for(arch: GuestArch) -> Apt | None:
    """The host's apt for its own architecture, a private apt state for another (no root)."""
    if arch.name == arches.host_arch():
        return None
    return Apt.foreign(arch.debian, vnix_home() / "apt" / arch.debian)


def _stage_kernel(vmlinuz: Path, out: Path, arch: GuestArch) -> None:
    """The kernel as the board boots it: a bzImage as is, an arm64 Image unpacked if needed."""
    if arch.name == "aarch64":
        out.write_bytes(bootkernel.arm64_image(vmlinuz.read_bytes(), vmlinuz.name))
        return
    if bootkernel.read_kind(vmlinuz) not in ("bzImage", "elf"):
        raise ImageError(f"{vmlinuz.name} is not an x86 bzImage")
    shutil.copyfile(vmlinuz, out)


def build_tiny(*, force: bool = False, on_step: Callable[[str], None] | None = None,
               directory: Path | None = None, arch: str = "x86_64") -> BuildResult:
    """Build (or confirm up to date) the tiny image for ``arch`` (x86_64: ``tiny``, aarch64:
    ``tiny-arm64``); see the module docstring for the steps."""
    guest = arches.get_arch(arch)
    step = on_step or (lambda _name: None)
    start = time.monotonic()
    dest = directory or image_dir(guest.image)
    apt = apt_for(guest)
    step("resolve")
    kernel_pkg, busybox_pkg = resolve_inputs(apt=apt, kernel_meta=guest.kernel_meta)
    digest = inputs_hash(kernel_pkg, busybox_pkg, guest.name)
    old = read_manifest(dest)
    if (not force and old and old.get("inputs_hash") == digest
            and all((dest / f).is_file() for f in old.get("files", {}).values())):
        return BuildResult(dest, True, time.monotonic() - start, old)

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vnix-image-", dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        step("download")
        debs = {p.name: download(p, tmp, apt) for p in (kernel_pkg, busybox_pkg)}
        step("unpack")
        root = tmp / "pkgroot"
        for deb in debs.values():
            unpack(deb, root)
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        mod_roots = sorted((root / "lib/modules").glob("*")) or sorted(
            (root / "usr/lib/modules").glob("*"))
        busybox = root / "bin/busybox"
        if not vmlinuz or not mod_roots or not busybox.is_file():
            raise ImageError("the packages lack boot/vmlinuz-*, lib/modules/* or bin/busybox")
        release = mod_roots[0].name

        step("modules")
        tree = kmod.ModuleTree.scan(mod_roots[0])
        order = tree.load_order(MODULES)
        modules = [(n, kmod.read_module(tree.paths[n])) for n in order]

        step("initramfs")
        applets = _applets(busybox, guest)
        staged = tmp / "out"
        staged.mkdir()
        identity: Path | None = None
        if guest.name == arches.host_arch():
            identity = tmp / "vnix-identity"
            build_identity_agent(identity)
        _write_initramfs(staged / "initrd.cpio", busybox.read_bytes(), applets, modules, guest,
                         identity.read_bytes() if identity else None)
        _stage_kernel(vmlinuz[0], staged / "vmlinuz", guest)

        step("rootfs")
        _write_rootfs(staged / "rootfs.ext4", tmp / "rootfs-tree", busybox, applets, identity)

        step("install")
        files = {"kernel": "vmlinuz", "initrd": "initrd.cpio", "rootfs": "rootfs.ext4"}
        (dest / "manifest.json").unlink(missing_ok=True)  # half-installed = not built
        for name in files.values():
            (staged / name).replace(dest / name)
        seconds = time.monotonic() - start
        manifest: dict[str, object] = {
            "name": guest.image,
            "arch": guest.name,
            "inputs": {"kernel": [kernel_pkg.name, kernel_pkg.version],
                       "busybox": [busybox_pkg.name, busybox_pkg.version],
                       "builder": builder_fingerprint()},
            "inputs_hash": digest,
            "kernel_release": release,
            "modules": order,
            "cmdline": guest.cmdline,
            "files": files,
            "sizes": {k: (dest / v).stat().st_size for k, v in files.items()},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(seconds, 2),
        }
        tmp_manifest = dest / "manifest.json.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp_manifest.replace(dest / "manifest.json")
    return BuildResult(dest, False, time.monotonic() - start, manifest)
