"""Golden snapshots on a node: a booted VM of an image, saved once, cloned many times.

A golden snapshot is made from an image (:meth:`GoldenStore.create`): a template VM boots the
image on the native driver (in its own run root, so it never shows among the agent's VMs),
the agent waits for its readiness line on the console, saves it through the VMM's control API
(``PUT /snapshot``) and ends it. The file and what the clones need stay under
``<data_dir>/snapshots/<name>/``::

    golden.json    GoldenRecord: image, machine size, readiness line, vsock, identity port
    golden.snap    the snapshot (vnix.vmm.snapshot format)
    disk.qcow2     the template's disk as it was when saved (an overlay of the image's disk;
                   the clones' overlays sit on it); absent for an image without a disk

Clones are made by one warm clone server per snapshot (:class:`vnix.vmm.clone.CloneServer`,
started on first use, kept while the agent runs; ``clone-server.pid`` lets the next agent end
one a killed agent left): ``fork()`` per clone, guest RAM mapped
MAP_PRIVATE from ``golden.snap`` (shared page cache until written). When the template's guest
said ``waiting for identity on port P`` (the ``clone_identity`` test-kit guest; the tiny Linux
image's ready line when its /sbin/vnix-identity listens, see vnix.images.guest_init), every clone
is sent ``name=HOST addr=IP seed=N`` over vsock right after it runs (HOST: the VM's name as a host
name, '_' -> '-').

Readiness: the request's ``ready`` text, else the first of :data:`READY_LINES` on the console.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vnix.hypervisor.spec import VmSpec
from vnix.node.errors import BadRequest, Conflict, NodeError, NotFound
from vnix.node.images import ImageStore, check_name
from vnix.vmm.config import DiskConfig, MachineConfig, VsockConfig

log = logging.getLogger(__name__)

READY_LINES = ("vnix-guest: ready", "waiting for identity on port", "tick 1")
IDENTITY = re.compile(r"waiting for identity on port (\d+)")
TEMPLATE_VM = "template"


class SnapshotError(NodeError):
    """A golden snapshot could not be made (the template's reason)."""


class NoSuchSnapshot(NotFound):
    pass


class SnapshotExists(Conflict):
    pass


class SnapshotInUse(Conflict):
    pass


@dataclass
class GoldenRecord:
    name: str
    image: str
    memory_mib: int
    cpus: int
    cmdline: str
    ready: str  # the console line the snapshot was taken after
    vsock: bool
    identity_port: int | None
    disk: str | None  # the template's disk as saved (clones overlay it)
    path: str  # golden.snap
    size: int
    created: float
    boot_s: float  # template start -> readiness line
    save_s: float  # the snapshot itself


class GoldenStore:
    def __init__(self, root: Path, images: ImageStore) -> None:
        self.root = root
        self.images = images
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._servers: dict[str, Any] = {}

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name, "snapshot")

    # -- records --------------------------------------------------------------------------
    def list(self) -> list[GoldenRecord]:
        if not self.root.is_dir():
            return []
        return [self.get(p.name) for p in sorted(self.root.iterdir())
                if (p / "golden.json").is_file()]

    def get(self, name: str) -> GoldenRecord:
        try:
            raw = json.loads((self._dir(name) / "golden.json").read_text())
        except FileNotFoundError:
            raise NoSuchSnapshot(f"no snapshot {name!r} on this node") from None
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"unreadable snapshot record {name!r}: {exc}") from None
        return GoldenRecord(**raw)

    def of_image(self, image: str) -> list[str]:
        """The snapshots made from ``image`` (their disk overlays its disk, their clones boot
        its kernel). A record that cannot be read counts when its saved disk sits on the
        image's directory: better a refused image delete than broken clones."""
        if not self.root.is_dir():
            return []
        image_dir = str(self.images.root / image) + "/"
        out = []
        for d in sorted(self.root.iterdir()):
            if not (d / "golden.json").is_file():
                continue
            try:
                if self.get(d.name).image == image:
                    out.append(d.name)
            except (SnapshotError, TypeError, BadRequest):
                if (d / "disk.qcow2").is_file() and image_dir in _backing_file(d / "disk.qcow2"):
                    out.append(d.name)
        return out

    def exists(self, name: str) -> bool:
        return (self._dir(name) / "golden.json").is_file()

    # -- making one -----------------------------------------------------------------------
    def ensure(self, name: str, image: str, memory_mib: int, cpus: int,
               ready: str | None = None, vsock: bool = True) -> GoldenRecord:
        """The snapshot ``name`` of ``image``: made now unless it exists (then it must be of
        ``image``). Parallel callers wait for the one that makes it."""
        with self._lock(name):
            if self.exists(name):
                rec = self.get(name)
                if rec.image != image:
                    raise SnapshotExists(f"snapshot {name!r} exists already, of image "
                                         f"{rec.image!r} (not {image!r})")
                return rec
            return self._create(name, image, memory_mib, cpus, ready, vsock)

    def create(self, name: str, image: str, memory_mib: int, cpus: int,
               ready: str | None = None, vsock: bool = True, timeout: float = 60.0) -> GoldenRecord:
        with self._lock(name):
            if self.exists(name):
                raise SnapshotExists(f"snapshot {name!r} exists already")
            return self._create(name, image, memory_mib, cpus, ready, vsock, timeout)

    def _create(self, name: str, image_name: str, memory_mib: int, cpus: int,
                ready: str | None, vsock: bool, timeout: float = 60.0) -> GoldenRecord:
        from vnix.hypervisor.native import NativeHypervisor

        image = self.images.get(image_name)
        if not image.kernel:
            raise BadRequest(f"image {image_name!r} has no kernel to boot")
        if image.arch != "x86_64":
            raise BadRequest(f"image {image_name!r} is {image.arch}: golden snapshots are made "
                             "on the native driver, which runs x86_64 guests")
        d = self._dir(name)
        shutil.rmtree(d, ignore_errors=True)  # leftovers of an attempt that died
        d.mkdir(parents=True)
        try:
            config = MachineConfig(kernel=image.kernel, initrd=image.initrd,
                                   cmdline=image.cmdline, memory_mib=memory_mib, cpus=cpus,
                                   arch=image.arch)
            config.validate()
            disk = None
            if image.disk:
                disk = self.images.make_overlay(image, d / "disk.qcow2")
                config.disks.append(DiskConfig(str(disk), format="qcow2"))
            if vsock:
                config.vsock = VsockConfig(cid=3, uds=str((d / "t.vsock").resolve()))
            drv = NativeHypervisor(d / "run")
            drv.define(VmSpec(TEMPLATE_VM, config, image=image.name))
            t0 = time.monotonic()
            try:
                drv.start(TEMPLATE_VM)
                line = _wait_ready(drv, ready, timeout)
                boot_s = time.monotonic() - t0
                time.sleep(0.2)  # into its hlt
                t1 = time.monotonic()
                snap = drv.snapshot(TEMPLATE_VM, "golden")
                save_s = time.monotonic() - t1
                path = d / "golden.snap"
                Path(snap.path).replace(path)
            finally:
                drv.destroy(TEMPLATE_VM)
            m = IDENTITY.search(line)
            rec = GoldenRecord(
                name=name, image=image.name, memory_mib=memory_mib, cpus=cpus,
                cmdline=image.cmdline, ready=line, vsock=vsock,
                identity_port=int(m.group(1)) if m and vsock else None,
                disk=str(disk) if disk else None, path=str(path), size=path.stat().st_size,
                created=time.time(), boot_s=round(boot_s, 3), save_s=round(save_s, 3))
            shutil.rmtree(d / "run", ignore_errors=True)
            (d / "golden.json").write_text(json.dumps(asdict(rec), indent=2))
            log.info("golden snapshot %s of %s: %d bytes (boot %.2f s, save %.2f s)", name,
                     image.name, rec.size, boot_s, save_s)
            return rec
        except Exception:
            shutil.rmtree(d, ignore_errors=True)
            raise

    # -- clones ---------------------------------------------------------------------------
    def server(self, name: str) -> Any:
        """The warm clone server of snapshot ``name`` (started on first use)."""
        from vnix.vmm.clone import CloneServer

        rec = self.get(name)
        with self._lock(f"server:{name}"):
            srv = self._servers.get(name)
            if srv is not None and srv.proc.poll() is None:
                return srv
            d = self._dir(name)
            _end_stale_server(d / "clone-server.pid", rec.path)  # a previous agent's
            srv = CloneServer(rec.path, str((d / "clones.sock").resolve()),
                              log=str(d / "clone-server.log"))
            (d / "clone-server.pid").write_text(f"{srv.proc.pid}\n")
            self._servers[name] = srv
            return srv

    def send_identity(self, rec: GoldenRecord, vm: str, uds: str, addr: str | None) -> str:
        """Tell a fresh clone who it is (its name, address and a seed of its own)."""
        from vnix.vmm.clone import send_identity

        assert rec.identity_port is not None
        host = vm.replace("_", "-")  # a VM name may hold '_', a host name may not (RFC 952)
        line = f"name={host} addr={addr or 'none'} seed={secrets.randbits(63)}"
        return send_identity(uds, rec.identity_port, line)

    def delete(self, name: str, used_by: list[str]) -> None:
        if used_by:
            raise SnapshotInUse(f"snapshot {name!r} is used by {', '.join(used_by)}")
        with self._lock(name):
            self.get(name)  # NoSuchSnapshot
            srv = self._servers.pop(name, None)
            if srv is not None:
                srv.close()
            _end_stale_server(self._dir(name) / "clone-server.pid", self.get(name).path)
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def close(self) -> None:
        for srv in list(self._servers.values()):
            try:
                srv.close()
            except Exception as exc:  # every server is tried
                log.warning("clone server: %s", exc)
        self._servers.clear()


def _backing_file(qcow2: Path) -> str:
    """The backing file named in a qcow2 header (QEMU's docs/interop/qcow2.txt: offset 8,
    size 4 at 16, both big-endian), '' if there is none or the file cannot be read."""
    try:
        with qcow2.open("rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != b"QFI\xfb":
                return ""
            offset, size = int.from_bytes(head[8:16], "big"), int.from_bytes(head[16:20], "big")
            if not offset or not 0 < size <= 1023:
                return ""
            f.seek(offset)
            return f.read(size).decode(errors="replace")
    except OSError:
        return ""


def _end_stale_server(pid_file: Path, snapshot: str) -> None:
    """End the clone server a previous agent left for ``snapshot`` (its clones run on: they
    are processes of their own)."""
    import psutil

    try:
        proc = psutil.Process(int(pid_file.read_text()))
        if "vnix.vmm.clone" in proc.cmdline() and snapshot in proc.cmdline():
            proc.terminate()
            proc.wait(5)
    except (OSError, ValueError, psutil.Error):
        pass
    pid_file.unlink(missing_ok=True)


def _wait_ready(drv: Any, ready: str | None, timeout: float) -> str:
    """The first console line with ``ready`` (or one of READY_LINES); raises if the template
    ends or stays silent."""
    wanted = (ready,) if ready else READY_LINES
    deadline = time.monotonic() + timeout
    while True:
        for line in drv.console_lines(TEMPLATE_VM, 200):
            if any(w in line for w in wanted):
                return str(line)
        state = drv.state(TEMPLATE_VM).value
        if state not in ("running", "paused"):
            tail = drv.console_lines(TEMPLATE_VM, 3)
            raise SnapshotError(f"the template VM is {state} before its readiness line "
                                f"({' | '.join(tail) or 'no output'})")
        if time.monotonic() > deadline:
            raise SnapshotError(f"no readiness line ({' or '.join(wanted)!r}) on the template's "
                                f"console within {timeout:g} s")
        time.sleep(0.05)
