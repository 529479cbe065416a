"""The node's image store: base images and per-VM qcow2 overlays.

Layout (``<data_dir>/images/``)::

    <name>/image.json     ImageRecord: kind, files, format, size, default kernel cmdline
    <name>/disk.raw|disk.qcow2, vmlinuz, initrd     the image's files (hard links when possible)

Kinds: ``linux`` (kernel + initrd + optional root disk, e.g. the tiny guests built by
``vnix image build tiny`` or ``tiny-arm64``), ``kernel`` (kernel + optional initrd), ``disk`` (a raw or qcow2
disk). A VM never writes to a base image: it gets a qcow2 overlay
(``qemu-img create -f qcow2 -b BASE -F FMT``, docs/tools/qemu-img.rst). Imports are checked
with ``qemu-img info --output=json`` and, for qcow2, ``qemu-img check``; a file that is not a
raw or qcow2 image, or a corrupt one, is refused. A kernel image records its guest's
architecture (``arch``: x86_64 for a bzImage or ELF, aarch64 for an arm64 Image), which VMs made
from it inherit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from vnix.node.errors import BadRequest, Conflict, ImageInUse, InvalidImage, UnknownImage

ImageKind = Literal["linux", "kernel", "disk"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SECTOR = 512


@dataclass
class ImageRecord:
    name: str
    kind: ImageKind
    disk: str | None = None  # absolute paths inside the store
    disk_format: str | None = None  # raw | qcow2
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    size: int = 0  # bytes on the host
    virtual_size: int = 0  # disk size the guest sees
    created: float = 0.0
    arch: str = "x86_64"  # the kernel's instruction set (records from before arches: x86_64)


def check_name(name: str, what: str = "image") -> str:
    if not NAME_RE.match(name):
        raise BadRequest(f"bad {what} name {name!r}: use a-z, 0-9, '.', '_', '-' (max 63)")
    return name


def qemu_img_info(path: Path) -> dict[str, object]:
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise InvalidImage("qemu-img is not installed (apt-get install qemu-utils)") from None
    if out.returncode != 0:
        raise InvalidImage(f"{path}: not a readable disk image: {out.stderr.strip()}")
    info: dict[str, object] = json.loads(out.stdout)
    return info


def detect_format(path: Path) -> tuple[str, int]:
    """(format, virtual size) of a disk image; InvalidImage if it is no raw/qcow2 image."""
    if not path.is_file():
        raise InvalidImage(f"{path} does not exist or is not a file")
    info = qemu_img_info(path)
    fmt, vsize = str(info.get("format")), int(info.get("virtual-size", 0))  # type: ignore[call-overload]
    if fmt == "qcow2":
        chk = subprocess.run(["qemu-img", "check", "--output=json", str(path)],
                             capture_output=True, text=True, timeout=300)
        if chk.returncode not in (0,):
            why = chk.stderr.strip() or chk.stdout.strip()
            raise InvalidImage(f"{path}: qcow2 image is corrupt: {why.splitlines()[-1] if why else chk.returncode}")
        if info.get("backing-filename"):
            raise InvalidImage(f"{path}: qcow2 images with a backing file cannot be imported")
    elif fmt == "raw":
        # qemu-img calls any file "raw": require what a disk is, whole sectors, and no text.
        size = path.stat().st_size
        if size == 0 or size % SECTOR:
            raise InvalidImage(f"{path}: not a disk image ({size} bytes is not a whole number "
                               f"of {SECTOR}-byte sectors)")
        with path.open("rb") as f:
            head = f.read(4096)
        if head[:4] == b"QFI\xfb":
            raise InvalidImage(f"{path}: qcow2 header that qemu-img cannot read: corrupt")
    else:
        raise InvalidImage(f"{path}: format {fmt!r} is not supported (raw or qcow2)")
    return fmt, vsize


def check_kernel(path: Path) -> str:
    """A bzImage ("HdrS" at 0x202, Documentation/arch/x86/boot.rst), an ELF (PVH) kernel or an
    arm64 Image (vnix.images.bootkernel); returns the guest architecture it boots."""
    from vnix.images.bootkernel import HEAD_BYTES, KIND_ARCH, kernel_kind

    if not path.is_file():
        raise InvalidImage(f"kernel {path} does not exist")
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    kind = "bzImage" if head[0x202:0x206] == b"HdrS" else kernel_kind(head)
    if kind not in KIND_ARCH:
        raise InvalidImage(f"{path} is neither a Linux bzImage, an ELF kernel nor an arm64 Image")
    return KIND_ARCH[kind]


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` into the store (instant, no space), copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def list(self) -> list[ImageRecord]:
        out = []
        for d in sorted(self.root.iterdir()):
            try:
                out.append(self.get(d.name))
            except (UnknownImage, BadRequest):
                continue
        return out

    def get(self, name: str) -> ImageRecord:
        try:
            raw = json.loads((self._dir(name) / "image.json").read_text())
            return ImageRecord(**raw)
        except (OSError, ValueError, TypeError):
            raise UnknownImage(f"unknown image {name!r}") from None

    def _new_dir(self, name: str) -> Path:
        d = self._dir(name)
        if (d / "image.json").exists():
            raise Conflict(f"image {name!r} already exists")
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def _save(self, rec: ImageRecord) -> ImageRecord:
        d = self._dir(rec.name)
        rec.size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        rec.created = time.time()
        (d / "image.json").write_text(json.dumps(asdict(rec), indent=2))
        return rec

    def import_disk(self, name: str, source: Path, fmt: str | None = None) -> ImageRecord:
        detected, vsize = detect_format(source)
        if fmt and fmt != detected:
            raise InvalidImage(f"{source} is {detected}, not {fmt}")
        d = self._new_dir(name)
        try:
            _place(source, d / f"disk.{detected}")
        except OSError as exc:
            shutil.rmtree(d, ignore_errors=True)
            raise InvalidImage(f"cannot copy {source}: {exc.strerror}") from None
        return self._save(ImageRecord(name, "disk", str(d / f"disk.{detected}"), detected,
                                      virtual_size=vsize))

    def import_kernel(self, name: str, kernel: Path, initrd: Path | None = None,
                      cmdline: str = "", disk: Path | None = None) -> ImageRecord:
        arch = check_kernel(kernel)
        if initrd is not None and not initrd.is_file():
            raise InvalidImage(f"initrd {initrd} does not exist")
        disk_fmt, vsize = detect_format(disk) if disk else (None, 0)
        d = self._new_dir(name)
        rec = ImageRecord(name, "linux" if disk else "kernel", cmdline=cmdline,
                          virtual_size=vsize, disk_format=disk_fmt, arch=arch)
        _place(kernel, d / "vmlinuz")
        rec.kernel = str(d / "vmlinuz")
        if initrd:
            _place(initrd, d / "initrd")
            rec.initrd = str(d / "initrd")
        if disk:
            _place(disk, d / f"disk.{disk_fmt}")
            rec.disk = str(d / f"disk.{disk_fmt}")
        return self._save(rec)

    def import_tiny(self, source: Path | None = None, name: str = "tiny",
                    built: str = "tiny") -> ImageRecord:
        """A guest built by ``vnix image build BUILT`` ($VNIX_HOME/images/BUILT; BUILT is tiny
        or tiny-arm64)."""
        from vnix.images.store import KNOWN_IMAGES, image_dir, read_manifest

        if source is None and built not in KNOWN_IMAGES:
            raise BadRequest(f"unknown built image {built!r} (known: {', '.join(KNOWN_IMAGES)})")
        src = source or image_dir(built)
        manifest = read_manifest(src)
        if manifest is None:
            raise UnknownImage(f"no {built} guest in {src}: run `vnix image build {built}` first")
        files = manifest.get("files", {})
        rootfs = files.get("rootfs")
        return self.import_kernel(name, src / files["kernel"], src / files["initrd"],
                                  str(manifest.get("cmdline", "")),
                                  src / rootfs if rootfs else None)

    def delete(self, name: str, used_by: list[str], snapshots: list[str] | None = None) -> None:
        """Remove image ``name`` unless VMs (``used_by``) or golden snapshots made from it
        (``snapshots``: their saved disk is an overlay of this image's disk, their clones
        boot its kernel) still need it."""
        self.get(name)
        if used_by:
            raise ImageInUse(f"image {name!r} is in use by VM(s) {', '.join(sorted(used_by))}")
        if snapshots:
            raise ImageInUse(f"image {name!r} has golden snapshot(s) made from it: "
                             f"{', '.join(sorted(snapshots))}; every clone of them needs it "
                             "(delete the snapshot(s) first)")
        shutil.rmtree(self._dir(name))

    def make_overlay(self, image: ImageRecord, dest: Path) -> Path:
        """A qcow2 overlay on the image's disk, for one VM."""
        if not image.disk or not image.disk_format:
            raise BadRequest(f"image {image.name!r} has no disk to put an overlay on")
        return qcow2_overlay(image.disk, image.disk_format, dest)


def qcow2_overlay(backing: str, backing_format: str, dest: Path) -> Path:
    """``qemu-img create -b``: a qcow2 overlay at ``dest`` over ``backing`` (its directory made)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, str(dest)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise InvalidImage(f"qemu-img create failed: {out.stderr.strip()}")
    return dest
