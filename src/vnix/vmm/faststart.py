"""Fast start (issue 4, item 5): ``vnix run --driver native --fast`` starts a guest from a saved
booted state of its kernel/image and machine shape instead of booting it.

The saved state is built once, the first time a combination is run:

1. the VMM boots the guest with a control API socket, its serial output read here;
2. at the guest's readiness line (``ready: NAME`` for a test-kit guest, ``vnix-guest: ready``
   for a vnix Linux image: :data:`READY`) the state is snapshotted through the control API
   (``PUT /snapshot``, full memory, not resumed) and that VMM is stopped;
3. the snapshot, and for an image with a root filesystem the qcow2 overlay the guest wrote to
   during that boot, are moved into place under ``$VNIX_HOME/faststart/<key>/``.

``key`` is a SHA-256 over every input of the boot (:func:`cache_key`): the kernel's and
initrd's contents, the command line, memory, vCPUs, architecture, the devices (the
configuration with its file paths left out), the root filesystem image (path, size, mtime)
and the snapshot format version. Changing any of them means another key, so another boot;
stale entries are left where they are (``rm -r $VNIX_HOME/faststart`` clears them all).

Every run (the first one right after building) then starts
``python -m vnix.vmm --restore <key>/state.snap --memory-backing private-mmap``: guest RAM is
mapped copy-on-write from the file (pages read on demand, the cache never written), and a root
disk is a fresh throwaway qcow2 overlay over the saved one, so the guest sees the disk exactly
as it left it at the snapshot and the cache stays pristine.

Extra ``--disk`` images are not supported with ``--fast``: the saved state holds the guest's
view of a disk (its page cache, the driver's queues) that the file may no longer match.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vnix.errors import VnixError
from vnix.vmm.config import MachineConfig

CACHE_VERSION = 1  # bump when what a cache entry holds changes
READY = re.compile(rb"(?:^|\n)(?:ready: \S+|vnix-guest: ready)[^\n]*\n")
BUILD_TIMEOUT = 300.0  # s: a boot on hardware-assisted KVM takes about a second
SNAPSHOT = "state.snap"
ROOT_DISK = "root.qcow2"
INPUTS = "inputs.json"


class FastStartError(VnixError):
    """The saved state could not be built."""


def faststart_dir() -> Path:
    from vnix.images.store import vnix_home

    return vnix_home() / "faststart"


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cache_inputs(config: MachineConfig, rootfs: str | None) -> dict[str, object]:
    """Everything the booted state depends on, as JSON-able values."""
    from vnix.vmm.snapshot import format as fmt

    shape = json.loads(config.to_json())
    for name in ("kernel", "initrd", "disks"):
        shape.pop(name, None)
    root = None
    if rootfs is not None:
        st = os.stat(rootfs)
        root = {"path": os.path.abspath(rootfs), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {
        "cache_version": CACHE_VERSION,
        "snapshot_format": fmt.VERSION,
        "kernel_sha256": _file_sha256(config.kernel),
        "initrd_sha256": _file_sha256(config.initrd) if config.initrd else None,
        "rootfs": root,
        "machine": shape,  # cmdline, memory, cpus, arch and the devices
    }


def cache_key(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


class FastStart:
    """One cache entry: where it is, whether it is built, and the VMM argv that restores it."""

    def __init__(self, config: MachineConfig, rootfs: str | None = None) -> None:
        if config.disks:
            raise FastStartError("--fast cannot be used with --disk: a saved state holds the guest's view of "
                                 "its disks, which the files may no longer match")
        self.config, self.rootfs = config, rootfs
        self.inputs = cache_inputs(config, rootfs)
        self.key = cache_key(self.inputs)
        self.dir = faststart_dir() / self.key

    @property
    def snapshot(self) -> Path:
        return self.dir / SNAPSHOT

    def built(self) -> bool:
        return self.snapshot.is_file() and (self.rootfs is None or (self.dir / ROOT_DISK).is_file())

    # -- building ---------------------------------------------------------------------------------
    def build(self) -> None:
        """Boot, wait for the readiness line, snapshot, stop; then move the entry into place
        (atomically: a concurrent build of the same key leaves one of the two)."""
        faststart_dir().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{self.key}.", dir=faststart_dir()))
        try:
            self._boot_and_snapshot(work)
            (work / INPUTS).write_text(json.dumps(self.inputs, indent=1, sort_keys=True) + "\n")
            (work / "machine.json").unlink(missing_ok=True)
            try:
                os.rename(work, self.dir)
            except OSError:
                if not self.built():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _boot_and_snapshot(self, work: Path) -> None:
        from vnix.vmm.api.client import VmmClient
        from vnix.vmm.launch import vmm_argv

        flags: list[str] = []
        if self.rootfs is not None:
            _qemu_img_overlay(self.rootfs, "raw", work / ROOT_DISK)
            flags += ["--disk", f"{work / ROOT_DISK},format=qcow2"]
        wire = MachineConfig.from_json(self.config.to_json())
        wire.disks = []
        (work / "machine.json").write_text(wire.to_json())
        sockdir = tempfile.mkdtemp(prefix="vnix-fs-")  # short: a Unix socket path has 107 bytes
        api = Path(sockdir) / "api.sock"
        log = work / "boot.log"
        argv = vmm_argv(["--config", str(work / "machine.json"), *flags, "--api-sock", str(api)])
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            self._wait_ready(proc, log)
            VmmClient(str(api), timeout=30).snapshot(str(work / SNAPSHOT), resume=False)
        except FastStartError:
            raise
        except (OSError, VnixError) as exc:
            raise FastStartError(f"fast start: cannot save the booted state: {exc}") from None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()
            shutil.rmtree(sockdir, ignore_errors=True)

    def _wait_ready(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        out = b""
        deadline = time.monotonic() + BUILD_TIMEOUT
        while not READY.search(out):
            left = deadline - time.monotonic()
            if left <= 0:
                raise FastStartError(f"fast start: no readiness line from the guest in {BUILD_TIMEOUT:.0f} s "
                                     f"(a test-kit guest prints 'ready: NAME', a vnix image 'vnix-guest: ready'); "
                                     f"its output ended with {out[-200:]!r}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                proc.wait()
                why = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise FastStartError(f"fast start: the VMM ended (status {proc.returncode}) before the guest was "
                                     f"ready: {why[0]}; its output ended with {out[-200:]!r}")
            out += chunk

    # -- restoring --------------------------------------------------------------------------------
    def restore_argv(self, workdir: Path) -> list[str]:
        """The VMM argv that restores the saved state (a root disk gets its own throwaway overlay
        over the saved one, in ``workdir``)."""
        from vnix.vmm.launch import vmm_argv

        flags = ["--restore", str(self.snapshot), "--memory-backing", "private-mmap"]
        if self.rootfs is not None:
            overlay = workdir / "rootfs.qcow2"
            _qemu_img_overlay(str(self.dir / ROOT_DISK), "qcow2", overlay)
            flags += ["--disk", f"{overlay},format=qcow2"]
        return vmm_argv(flags)


def _qemu_img_overlay(base: str, base_format: str, overlay: Path) -> None:
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(base), "-F", base_format,
                        str(overlay)], check=True, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise FastStartError("qemu-img not found: install qemu-utils") from None
    except subprocess.CalledProcessError as exc:
        raise FastStartError(f"qemu-img create failed: {exc.stderr.strip()}") from None


def prepare(config: MachineConfig, rootfs: str | None, workdir: Path) -> list[str]:
    """The VMM argv for ``vnix run --fast``: builds the cache entry first if it is missing
    (saying so in one stderr line)."""
    fs = FastStart(config, rootfs)
    if not fs.built():
        print(f"vnix: fast start: no saved state for this kernel and machine yet: booting it once and saving it in "
              f"{fs.dir}", file=sys.stderr, flush=True)
        fs.build()
    return fs.restore_argv(workdir)


__all__ = ["FastStart", "FastStartError", "cache_inputs", "cache_key", "faststart_dir", "prepare"]

