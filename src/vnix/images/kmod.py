"""Kernel modules: find them, read their dependencies from the .ko files, order them for loading.

Debian's kernel package ships no ``modules.dep`` (depmod writes it when the package is
installed), so dependencies are read where depmod reads them: the ``.modinfo`` ELF section of
each module, a list of NUL-terminated ``key=value`` strings (include/linux/moduleparam.h,
``MODULE_INFO``) with ``name=``, ``depends=a,b`` and ``softdep=pre: x post: y``.
When a ``modules.dep`` exists (a tree depmod has run on) it is used instead.

ELF64 facts used (System V gABI, "Sections"): ``e_shoff`` at 0x28 (u64), ``e_shentsize`` at 0x3A,
``e_shnum`` at 0x3C, ``e_shstrndx`` at 0x3E (u16); a section header has ``sh_name`` (u32) at 0,
``sh_offset`` (u64) at 0x18 and ``sh_size`` (u64) at 0x20.
"""
from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vnix.images import ImageError

_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


def module_name(path: Path | str) -> str:
    """``.../virtio-rng.ko.xz`` -> ``virtio_rng`` (the kernel treats - and _ alike)."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("-", "_")
    raise ImageError(f"{path} is not a kernel module")


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed if it is a .ko.xz / .ko.gz."""
    data = path.read_bytes()
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(data)
        if path.name.endswith(".gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError) as exc:
        raise ImageError(f"cannot decompress {path}: {exc}") from None
    if path.name.endswith(".zst"):
        raise ImageError(f"{path}: zstd-compressed modules are not supported")
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section as key -> values (a key such as ``alias`` may repeat)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ImageError("not a 64-bit ELF kernel module")
    try:
        (shoff,) = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

        def section(i: int) -> tuple[int, int, int]:
            base = shoff + i * shentsize
            (name,) = struct.unpack_from("<I", elf, base)
            offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
            return name, offset, size

        _, str_off, str_size = section(shstrndx)
        strtab = elf[str_off : str_off + str_size]
        for i in range(shnum):
            name_off, offset, size = section(i)
            end = strtab.index(b"\0", name_off)
            if strtab[name_off:end] == b".modinfo":
                info: dict[str, list[str]] = {}
                for item in elf[offset : offset + size].split(b"\0"):
                    key, sep, value = item.decode(errors="replace").partition("=")
                    if sep:
                        info.setdefault(key, []).append(value)
                return info
    except (struct.error, ValueError) as exc:
        raise ImageError(f"malformed kernel module: {exc}") from None
    return {}


@dataclass
class ModuleTree:
    """The modules of one kernel (``lib/modules/<release>``)."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)  # module name -> file
    builtin: set[str] = field(default_factory=set)
    _deps: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: Path) -> ModuleTree:
        if not root.is_dir():
            raise ImageError(f"no kernel modules at {root}")
        tree = cls(root)
        for path in sorted(root.rglob("*.ko*")):
            if any(path.name.endswith(s) for s in _SUFFIXES):
                tree.paths[module_name(path)] = path
        builtin = root / "modules.builtin"
        if builtin.is_file():
            tree.builtin = {module_name(line.strip()) for line in builtin.read_text().split()
                            if line.strip()}
        dep_file = root / "modules.dep"
        if dep_file.is_file():
            for line in dep_file.read_text().splitlines():
                mod, _, deps = line.partition(":")
                tree._deps[module_name(mod)] = [module_name(d) for d in deps.split()]
        return tree

    def depends(self, name: str) -> list[str]:
        """Hard dependencies, then softdep ``pre:`` modules that exist as files."""
        if name not in self._deps:
            info = modinfo(read_module(self.paths[name]))
            deps = [d.replace("-", "_") for v in info.get("depends", []) for d in v.split(",") if d]
            for soft in info.get("softdep", []):
                words = soft.split()
                pre = words[words.index("pre:") + 1:] if "pre:" in words else []
                for w in pre:
                    if w.endswith(":"):
                        break
                    # a softdep names an alias such as "crc32c"; its generic implementation is
                    # the module that loads on any CPU.
                    for cand in (w.replace("-", "_"), f"{w.replace('-', '_')}_generic"):
                        if cand in self.paths and cand not in deps:
                            deps.append(cand)
                            break
            self._deps[name] = deps
        return self._deps[name]

    def load_order(self, wanted: list[str]) -> list[str]:
        """``wanted`` and everything they need, each after its dependencies (a post-order walk).

        Built-in modules are skipped; a name that is neither a file nor built in is an error."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                raise ImageError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
            if name not in self.paths:
                if name in self.builtin:
                    state[name] = "done"
                    return
                raise ImageError(f"kernel module {name} not found under {self.root}")
            state[name] = "visiting"
            for dep in self.depends(name):
                visit(dep, chain + (name,))
            state[name] = "done"
            order.append(name)

        for name in wanted:
            visit(name.replace("-", "_"), ())
        return order
