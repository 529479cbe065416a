"""Reading a snapshot file (:func:`load_snapshot`) and filling guest RAM from it."""
from __future__ import annotations

import os
import zlib

from vnix.vmm import ConfigError, GuestMemoryError
from vnix.vmm.config import MachineConfig
from vnix.vmm.memory import PAGE_SIZE, GuestMemory
from vnix.vmm.snapshot import codec, format as fmt
from vnix.vmm.snapshot.errors import SnapshotError, SnapshotMismatch
from vnix.vmm.snapshot.ram import guest_page_of, ram_views
from vnix.vmm.snapshot.state import MachineState

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from typing import Literal

MAX_CHAIN = 64  # diffs on diffs on a full snapshot


class SnapshotLayer:
    """One file of a chain: its header, state and the RAM pages it stores."""

    def __init__(self, path: str, fd: int, header: fmt.Header, state: MachineState,
                 extents: list[tuple[int, int]]) -> None:
        self.path, self.fd, self.header, self.state, self.extents = path, fd, header, state, extents

    @property
    def dense(self) -> bool:
        return self.header.kind == fmt.KIND_FULL

    @property
    def memory(self) -> fmt.Section:
        return self.header.sections["memory"]


class MachineSnapshot:
    """A loaded, checked snapshot: its state, and the chain of files that hold its RAM (a full
    snapshot first, then each diff on it, this one last). Holds the files open until
    :meth:`close`."""

    def __init__(self, path: str, state: MachineState, layers: list[SnapshotLayer]) -> None:
        self.path, self.state, self.layers = path, state, layers
        self._config: MachineConfig | None = None

    @property
    def config(self) -> MachineConfig:
        """The saved machine configuration, parsed once (a clone server's children share it:
        :func:`vnix.vmm.snapshot.restore.effective_config` copies it before changing it)."""
        if self._config is None:
            self._config = MachineConfig.from_json(self.state.config)
        return self._config

    def warm(self) -> None:
        """What every restore of this snapshot needs and can share, done now: the configuration
        parsed, the modules of its devices imported. A process that loads once and restores many
        times (the clone server forks a child a clone) does it before forking, so no child
        imports a module or parses JSON on its way to KVM_RUN (in a fork child that cost ~3 ms,
        each module's pages copied on write); a one-shot restore would do the same work later."""
        cfg = self.config
        import vnix.vmm.arch.x86.layout  # noqa: F401 - the RTC's memory sizes, the legacy GSI routes

        if cfg.has_virtio():
            import vnix.vmm.devices.pci.setup  # noqa: F401
        for disk in cfg.disks:
            if disk.format == "qcow2":
                import vnix.vmm.block.qcow2  # noqa: F401
            else:
                import vnix.vmm.block.raw  # noqa: F401

    @property
    def kind(self) -> Literal["full", "diff"]:
        return "full" if self.layers[-1].dense else "diff"

    @property
    def snapshot_id(self) -> str:
        return self.layers[-1].header.id_hex

    def stored_pages(self) -> list[int]:
        """Guest-physical page numbers this file itself stores (a diff: the pages that changed)."""
        top = self.layers[-1]
        mem_layout = _Layout(top.state.memory_layout)
        return [mem_layout.guest_page(first + i) for first, count in top.extents for i in range(count)]

    def close(self) -> None:
        for layer in self.layers:
            if layer.fd >= 0:
                os.close(layer.fd)
                layer.fd = -1

    # -- guest RAM --------------------------------------------------------------------------
    def open_memory(self, backing: Literal["copy", "private-mmap"] = "copy") -> GuestMemory:
        """Guest RAM holding the snapshot's memory. ``copy``: fresh anonymous memory with every
        stored page read in (their crc32 checked on the way). ``private-mmap``: the full
        snapshot's memory section mapped MAP_PRIVATE (pages read on demand, shared until
        written; not checksummed, which would read them all), diffs copied over it."""
        if backing not in ("copy", "private-mmap"):
            raise SnapshotError(f"memory backing must be copy or private-mmap, not {backing!r}")
        layout = [(a, s) for a, s in self.state.memory_layout]
        base = self.layers[0]
        try:
            if backing == "private-mmap":
                mem = GuestMemory(layout, file=(base.fd, base.memory.offset))
                rest = self.layers[1:]
            else:
                mem = GuestMemory(layout)
                rest = self.layers
        except GuestMemoryError as exc:
            raise SnapshotError(str(exc)) from None
        for layer in rest:
            _read_layer(mem, layer)
        return mem


class _Layout:
    def __init__(self, layout: list[list[int]]) -> None:
        self.layout = layout

    def guest_page(self, ram_page: int) -> int:
        base = 0
        for addr, size in self.layout:
            n = size // PAGE_SIZE
            if ram_page < base + n:
                return addr // PAGE_SIZE + ram_page - base
            base += n
        raise SnapshotError(f"RAM page {ram_page} is past the end of the snapshot's memory")


def _read_layer(mem: GuestMemory, layer: SnapshotLayer) -> None:
    """Read a layer's stored pages into RAM and check their crc32."""
    crc = 0
    sec = layer.memory
    for ram_at, file_at, n in fmt.memory_chunks(layer.extents, layer.dense):
        for view in ram_views(mem, ram_at, n):
            got = os.preadv(layer.fd, [view], sec.offset + file_at)
            if got != len(view):
                raise SnapshotError(f"{layer.path}: snapshot memory is truncated")
            crc = zlib.crc32(view, crc)
            file_at += len(view)
    if fmt.crc_digest(crc) != sec.digest:
        raise SnapshotError(f"{layer.path}: snapshot memory checksum mismatch (corrupt)")


def _load_layer(path: str, verify_memory: bool) -> SnapshotLayer:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotError(f"cannot open snapshot {path}: {exc.strerror}") from None
    try:
        header = fmt.read_header(fd, path)
        state = codec.loads(fmt.read_section(fd, path, header.sections["state"]))
        if not isinstance(state, MachineState):
            raise SnapshotError(f"{path}: snapshot state is not a machine's state")
        layout = state.memory_layout
        if (not layout or any(not isinstance(r, list) or len(r) != 2 or r[0] % PAGE_SIZE or r[1] <= 0 or r[1] % PAGE_SIZE
                              for r in layout) or state.ram_bytes > fmt.MAX_RAM_BYTES):
            raise SnapshotError(f"{path}: snapshot memory layout is impossible")
        ram = state.ram_bytes
        for name in ("extents", "memory"):
            if name not in header.sections:
                raise SnapshotError(f"{path}: snapshot has no {name} section")
        ext = header.sections["extents"]
        if ext.length > 16 * (ram // PAGE_SIZE):
            raise SnapshotError(f"{path}: snapshot extents section is larger than RAM allows")
        extents = fmt.decode_extents(fmt.read_section(fd, path, ext), ram // PAGE_SIZE)
        mem = header.sections["memory"]
        stored = sum(c for _, c in extents) * PAGE_SIZE
        want = ram if header.kind == fmt.KIND_FULL else stored
        if mem.length != want or mem.length > ram:
            raise SnapshotError(f"{path}: snapshot memory section is {mem.length} bytes, expected {want}")
        if (header.kind == fmt.KIND_DIFF) != (state.base_id is not None):
            raise SnapshotError(f"{path}: snapshot kind and base disagree")
        if verify_memory:
            fmt.verify_memory(fd, path, mem, extents, header.kind == fmt.KIND_FULL)
        return SnapshotLayer(path, fd, header, state, extents)
    except BaseException:
        os.close(fd)
        raise


def load_snapshot(path: str, *, verify_memory: bool = True) -> MachineSnapshot:
    """Open and check a snapshot (and, for a diff, the chain of bases it needs). Corrupt,
    truncated or foreign files raise :class:`SnapshotError` with one line. ``verify_memory``
    reads every stored page to check the memory's crc32 (:meth:`MachineSnapshot.open_memory`
    with ``copy`` checks it anyway while reading)."""
    path = os.path.abspath(path)
    layers: list[SnapshotLayer] = []
    try:
        layer = _load_layer(path, verify_memory)
        layers.append(layer)
        while not layer.dense:
            if len(layers) > MAX_CHAIN:
                raise SnapshotError(f"{path}: more than {MAX_CHAIN} diff snapshots on one base")
            base_path, base_id = layer.state.base_path, layer.state.base_id
            assert base_path is not None
            if not os.path.isfile(base_path):
                raise SnapshotMismatch(f"{layer.path}: its base snapshot {base_path} is missing")
            base = _load_layer(base_path, verify_memory)
            layers.append(base)
            if base.header.id_hex != base_id:
                raise SnapshotMismatch(f"{layer.path}: {base_path} is not its base (another snapshot was written there)")
            if base.state.memory_layout != layer.state.memory_layout:
                raise SnapshotMismatch(f"{layer.path}: its base {base_path} has another memory layout")
            layer = base
    except BaseException:
        for lay in layers:
            os.close(lay.fd)
        raise
    layers.reverse()
    snap = MachineSnapshot(path, layers[-1].state, layers)
    try:
        snap.warm()
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        snap.close()
        raise SnapshotError(f"{path}: snapshot machine configuration is unreadable: {exc}") from None
    return snap


__all__ = ["MachineSnapshot", "SnapshotLayer", "load_snapshot", "guest_page_of"]
