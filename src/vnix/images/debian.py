"""Debian packages as build inputs: resolve versions, download and unpack without installing.

``apt-cache show`` gives the candidate version of a package and, for the ``linux-image-amd64``
metapackage, the versioned kernel package it depends on. ``apt-get download`` fetches the .deb
into the current directory (no dpkg database change) and ``dpkg-deb -x`` unpacks it anywhere.
A fresh machine has no package lists; then ``apt-get update`` runs once (it needs root).
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vnix.images import ImageError

KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"


@dataclass(frozen=True)
class Package:
    name: str
    version: str


def _run(argv: list[str], *, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                              env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise ImageError(f"{argv[0]} not found (this builder needs Debian's apt and dpkg)") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ImageError(f"{' '.join(argv[:3])} failed: {detail}")
    return proc.stdout


def _show(*names: str) -> dict[str, dict[str, str]]:
    """Package name -> its candidate stanza (``apt-cache show --no-all-versions``), one call."""
    try:
        text = _run(["apt-cache", "show", "--no-all-versions", *names])
    except ImageError:
        if len(names) == 1:
            return {}
        # one unknown name fails the whole call: ask one by one to find out which exist
        return {k: v for n in names for k, v in _show(n).items()}
    stanzas: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields.setdefault(key, value.strip())
        if "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    return stanzas


def apt_update() -> None:
    if os.geteuid() != 0:
        raise ImageError("apt has no package lists; run `sudo apt-get update` once, then retry")
    _run(["apt-get", "update", "-qq"])


def resolve_inputs(*, update_if_missing: bool = True) -> tuple[Package, Package]:
    """(kernel package, busybox package) that a build would use now."""
    found = _show(KERNEL_META, BUSYBOX)
    if KERNEL_META not in found and update_if_missing:
        apt_update()
        found = _show(KERNEL_META, BUSYBOX)
    meta = found.get(KERNEL_META)
    if not meta:
        raise ImageError(f"apt knows no package {KERNEL_META} (is this Debian with main enabled?)")
    m = re.search(r"(linux-image-[^\s,(]+)", meta.get("Depends", ""))
    if not m:
        raise ImageError(f"{KERNEL_META} depends on no linux-image package: {meta.get('Depends')!r}")
    kernel = _show(m.group(1)).get(m.group(1))
    busybox = found.get(BUSYBOX)
    if not kernel or not busybox:
        raise ImageError(f"apt cannot find {m.group(1) if not kernel else BUSYBOX}")
    return Package(m.group(1), kernel["Version"]), Package(BUSYBOX, busybox["Version"])


def download(pkg: Package, dest: Path) -> Path:
    """``apt-get download name=version`` into ``dest``; returns the .deb path."""
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        # as root apt drops to the _apt user, who cannot write to a private temp dir
        argv += ["-o", "APT::Sandbox::User=root"]
    before = set(dest.glob("*.deb"))
    _run(argv + [f"{pkg.name}={pkg.version}"], cwd=dest)
    new = sorted(set(dest.glob(f"{pkg.name}_*.deb")) - before)
    if not new:
        raise ImageError(f"apt-get download {pkg.name} produced no .deb")
    return new[0]


def unpack(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
