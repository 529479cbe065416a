"""Debian packages as build inputs: resolve versions, download and unpack without installing.

``apt-cache show`` gives the candidate version of a package and, for the ``linux-image-amd64``
metapackage, the versioned kernel package it depends on. ``apt-get download`` fetches the .deb
into the current directory (no dpkg database change) and ``dpkg-deb -x`` unpacks it anywhere.
A fresh machine has no package lists; then ``apt-get update`` runs once (it needs root).

Packages of another architecture (arm64 on an amd64 host) come through a private apt state,
:meth:`Apt.foreign`: the host's sources and keys, but package lists for that architecture only,
kept in ``$VNIX_HOME/apt/<arch>/`` (``Dir::State``, ``Dir::Cache``, an empty dpkg status,
``APT::Architecture``). The host's dpkg is not touched (no ``dpkg --add-architecture``), nothing
needs root, and the lists are refreshed when they are a day old.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vnix.images import ImageError

KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"
LISTS_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class Apt:
    """How to call apt for one architecture: the host's own apt, or a private state for another."""

    arch: str  # Debian architecture name: amd64, arm64
    options: tuple[str, ...] = ()  # -o KEY=VALUE words given to every apt-get / apt-cache call
    state: Path | None = None  # the private state directory; None: the host's

    @classmethod
    def foreign(cls, arch: str, state: Path) -> Apt:
        opts = {
            "Dir::State": state, "Dir::State::Lists": state / "lists",
            "Dir::State::status": state / "status", "Dir::Cache": state / "cache",
            "APT::Architecture": arch, "APT::Architectures": arch,
            "Acquire::Languages": "none",
        }
        return cls(arch, tuple(w for k, v in opts.items() for w in ("-o", f"{k}={v}")), state)

    def lists_fresh(self) -> bool:
        if self.state is None:
            return True
        # apt dates the list files by the mirror's Last-Modified, so a stamp of our own says
        # when they were fetched
        stamp = self.state / "updated"
        return stamp.is_file() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S

    def update(self) -> None:
        """Fetch the package lists: the host's (needs root) or this private state's (no root)."""
        if self.state is None:
            apt_update()
            return
        for d in ("lists/partial", "cache/archives/partial"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        (self.state / "status").touch()
        _run(["apt-get", "-q", *self.options, *_sandbox(), "update"])
        (self.state / "updated").touch()


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


def _sandbox() -> list[str]:
    # as root apt drops to the _apt user, who cannot write to a private temp dir
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


def _show(*names: str, apt: Apt | None = None) -> dict[str, dict[str, str]]:
    """Package name -> its candidate stanza (``apt-cache show --no-all-versions``), one call."""
    options = list(apt.options) if apt else []
    try:
        text = _run(["apt-cache", *options, "show", "--no-all-versions", *names])
    except ImageError:
        if len(names) == 1:
            return {}
        # one unknown name fails the whole call: ask one by one to find out which exist
        return {k: v for n in names for k, v in _show(n, apt=apt).items()}
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


def resolve_inputs(*, update_if_missing: bool = True, apt: Apt | None = None,
                   kernel_meta: str = KERNEL_META) -> tuple[Package, Package]:
    """(kernel package, busybox package) that a build would use now."""
    if apt is not None and not apt.lists_fresh():
        apt.update()
    found = _show(kernel_meta, BUSYBOX, apt=apt)
    if kernel_meta not in found and update_if_missing:
        if apt is not None:
            apt.update()
        else:
            apt_update()
        found = _show(kernel_meta, BUSYBOX, apt=apt)
    meta = found.get(kernel_meta)
    if not meta:
        raise ImageError(f"apt knows no package {kernel_meta} (is this Debian with main enabled?)")
    m = re.search(r"(linux-image-[^\s,(]+)", meta.get("Depends", ""))
    if not m:
        raise ImageError(f"{kernel_meta} depends on no linux-image package: {meta.get('Depends')!r}")
    kernel = _show(m.group(1), apt=apt).get(m.group(1))
    busybox = found.get(BUSYBOX)
    if not kernel or not busybox:
        raise ImageError(f"apt cannot find {m.group(1) if not kernel else BUSYBOX}")
    return Package(m.group(1), kernel["Version"]), Package(BUSYBOX, busybox["Version"])


def download(pkg: Package, dest: Path, apt: Apt | None = None) -> Path:
    """``apt-get download name=version`` into ``dest``; returns the .deb path."""
    argv = ["apt-get", "download", "-q", *(apt.options if apt else ()), *_sandbox()]
    before = set(dest.glob("*.deb"))
    _run(argv + [f"{pkg.name}={pkg.version}"], cwd=dest)
    new = sorted(set(dest.glob(f"{pkg.name}_*.deb")) - before)
    if not new:
        raise ImageError(f"apt-get download {pkg.name} produced no .deb")
    return new[0]


def unpack(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
