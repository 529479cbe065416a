"""Where images live and how a built image is read back.

Layout under ``$VNIX_HOME`` (default ``~/.local/share/vnix``)::

    images/<name>/vmlinuz         the kernel (x86: bzImage; arm64: Image)
    images/<name>/initrd.cpio     the initramfs (cpio "newc", uncompressed: see tiny.py)
    images/<name>/rootfs.ext4     the root disk (raw ext4), optional
    images/<name>/manifest.json   inputs, their hash, the architecture, the kernel command
                                  line, sizes
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnix.images import ImageError, UnknownImageError
from vnix.images.arches import IMAGES

KNOWN_IMAGES = tuple(IMAGES)  # tiny, tiny-arm64


def vnix_home() -> Path:
    env = os.environ.get("VNIX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "vnix"


def image_dir(name: str) -> Path:
    return vnix_home() / "images" / name


@dataclass(frozen=True)
class GuestImage:
    name: str
    kernel: Path
    initrd: Path
    rootfs: Path | None
    cmdline: str
    arch: str = "x86_64"  # the guest's architecture (uname -m)
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_image(name: str) -> GuestImage:
    """A built image by name; UnknownImageError (exit status 2) if there is none."""
    if name not in KNOWN_IMAGES:
        raise UnknownImageError(f"unknown image {name!r} (known: {', '.join(KNOWN_IMAGES)})")
    directory = image_dir(name)
    manifest = read_manifest(directory)
    if manifest is None:
        raise UnknownImageError(f"image {name!r} is not built yet: run `vnix image build {name}`")
    try:
        files = manifest["files"]
        image = GuestImage(
            name=name,
            kernel=directory / files["kernel"],
            initrd=directory / files["initrd"],
            rootfs=directory / files["rootfs"] if files.get("rootfs") else None,
            cmdline=str(manifest["cmdline"]),
            arch=str(manifest.get("arch", "x86_64")),  # images built before arches: x86_64
            manifest=manifest,
        )
    except (KeyError, TypeError) as exc:
        raise ImageError(f"{directory}/manifest.json is damaged ({exc}): rebuild with "
                         f"`vnix image build {name} --force`") from None
    for path in (image.kernel, image.initrd, image.rootfs):
        if path is not None and not path.is_file():
            raise ImageError(f"{path} is missing: rebuild with `vnix image build {name} --force`")
    return image
