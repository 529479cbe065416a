"""Taking a snapshot of a paused machine (:func:`save_machine`)."""
from __future__ import annotations

import os
import time

from vnix.kvm import KvmError
from vnix.vmm.memory import PAGE_SIZE, GuestMemory
from vnix.vmm.snapshot import codec, format as fmt
from vnix.vmm.snapshot.dirty import DirtyTracker
from vnix.vmm.snapshot.errors import SnapshotError, SnapshotMismatch
from vnix.vmm.snapshot.ram import ram_pages_of, ram_views
from vnix.vmm.snapshot.state import MachineState, VmState
from vnix.vmm.record import Record
from vnix.vmm.vcpu import readable_msrs, save_vcpu_state

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Literal

    from vnix.vmm.machine import Machine


class SnapshotInfo(Record):
    """What :func:`save_machine` wrote. Page numbers are guest-physical (address // 4096)."""

    __slots__ = ("path", "kind", "snapshot_id", "base", "file_bytes", "disk_bytes", "ram_bytes", "pages",
                 "guest_pages", "vmm_pages", "seconds")

    def __init__(self, path: str, kind: Literal["full", "diff"], snapshot_id: str, base: str | None, file_bytes: int,
                 disk_bytes: int, ram_bytes: int, pages: int, guest_pages: int, vmm_pages: list[int] | None = None,
                 seconds: float = 0.0) -> None:
        self.path, self.kind, self.snapshot_id, self.base = path, kind, snapshot_id, base
        self.file_bytes = file_bytes  # the file's length
        self.disk_bytes = disk_bytes  # what it occupies (a full snapshot leaves never-touched RAM as holes)
        self.ram_bytes = ram_bytes
        self.pages = pages  # pages of RAM stored
        self.guest_pages = guest_pages  # of which KVM's dirty log reported (diff)
        self.vmm_pages = vmm_pages if vmm_pages is not None else []  # pages the VMM itself wrote (diff)
        self.seconds = seconds


_MSR_CACHE: dict[int, list[int]] = {}


def _msr_indices(machine: Machine) -> list[int]:
    """KVM's saveable MSRs minus the ones it will not read; the TSC deadline last, after the TSC
    (restoring it needs the TSC and the LAPIC in place)."""
    parts = machine.parts
    assert parts is not None
    key = id(parts.kvm)
    if key not in _MSR_CACHE:
        listed = parts.kvm.get_msr_index_list()
        keep = readable_msrs(parts.vcpus[0], listed)
        _MSR_CACHE[key] = sorted(keep, key=lambda i: (i == 0x6E0, i != 0x10))  # IA32_TSC first, TSC_DEADLINE last
    return _MSR_CACHE[key]


def capture_state(machine: Machine) -> MachineState:
    """Every component's ``save()``; the machine must be paused."""
    parts = machine.parts
    assert parts is not None
    idx = _msr_indices(machine)
    vcpus = [save_vcpu_state(v, idx) for v in parts.vcpus]
    vm = parts.vm
    clock = vm.get_clock()
    vm_state = VmState([bytes(vm.get_irqchip(c)) for c in (0, 1, 2)], bytes(vm.get_pit2()), clock.clock, clock.flags)
    pci = machine.pci
    return MachineState(
        machine.config.to_json(), [[r.guest_addr, r.size] for r in parts.mem], vcpus, vm_state,
        machine.serial.save(), machine.rtc.save(), machine.i8042.save(), pci.host.address,
        {name: fn.save() for name, fn in pci.functions.items()}, time.time(),
    )


def populated_extents(mem: GuestMemory) -> list[tuple[int, int]]:
    """Runs of RAM pages that may hold data (the rest was never touched: zero)."""
    pop = bytes(mem.populated())
    out = []
    i = pop.find(1)
    while i >= 0:
        j = pop.find(0, i)
        if j < 0:
            j = len(pop)
        out.append((i, j - i))
        i = pop.find(1, j)
    return out


def save_machine(machine: Machine, path: str, *, memory: Literal["full", "diff"] = "full",
                 base: str | None = None) -> SnapshotInfo:
    """Write the paused ``machine`` to ``path`` (one file; format in :mod:`.format`).

    ``memory="full"``: all of RAM (never-touched pages as holes). ``memory="diff"``: only the
    pages written since the last snapshot this machine took or was restored from, which is the
    diff's base (``base``, if given, must name that same file). After either, dirty tracking
    starts again with this snapshot as the base of the next diff.
    """
    t0 = time.monotonic()
    if memory not in ("full", "diff"):
        raise SnapshotError(f"memory must be 'full' or 'diff', not {memory!r}")
    if machine.parts is None:
        raise SnapshotError("the machine is not built yet")
    if not machine.paused:
        raise SnapshotError("pause the machine before taking a snapshot")
    path = os.path.abspath(path)
    tracker: DirtyTracker | None = getattr(machine, "dirty", None)
    if memory == "diff":
        if tracker is None or not tracker.valid:
            raise SnapshotError("no base for a diff snapshot: take a full snapshot first "
                                "(dirty pages are tracked from a snapshot on)")
        if base is not None and os.path.realpath(base) != os.path.realpath(tracker.base_path):
            raise SnapshotMismatch(f"dirty pages are tracked since {tracker.base_path}, not {base}")
        if os.path.realpath(path) == os.path.realpath(tracker.base_path):
            raise SnapshotError(f"a diff snapshot cannot overwrite its own base {path}")
        if not os.path.isfile(tracker.base_path):
            raise SnapshotError(f"the diff's base {tracker.base_path} no longer exists")
    parts = machine.parts
    mem = parts.mem
    try:
        state = capture_state(machine)
    except KvmError as exc:
        raise SnapshotError(f"cannot read the machine's state: {exc}") from None
    vmm_pages: set[int] = set()
    guest_count = 0
    if memory == "diff":
        assert tracker is not None
        state.base_id, state.base_path = tracker.base_id, tracker.base_path
        guest, vmm_pages = tracker.collect()
        guest_count = len(guest)
        extents = list(fmt.runs(ram_pages_of(mem, guest | vmm_pages)))
    else:
        extents = populated_extents(mem)
    dense = memory == "full"
    try:
        writer = fmt.Writer(path, fmt.KIND_FULL if dense else fmt.KIND_DIFF)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror}") from None
    try:
        writer.add_bytes("state", codec.dumps(state))
        writer.add_bytes("extents", fmt.encode_extents(extents))
        stored = sum(c for _, c in extents) * PAGE_SIZE
        length = mem.size if dense else stored

        def chunks() -> Iterator[tuple[int, memoryview]]:
            for ram_at, file_at, n in fmt.memory_chunks(extents, dense):
                for view in ram_views(mem, ram_at, n):
                    yield file_at, view
                    file_at += len(view)

        writer.add_memory(length, chunks())
        header = writer.finish()
    except OSError as exc:
        writer.abort()
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror or exc}") from None
    except BaseException:
        writer.abort()
        raise
    # the next diff is relative to this snapshot
    logging_on = tracker is not None
    machine.dirty = DirtyTracker(parts.vm, mem, machine.pci.functions, path, header.id_hex).start(logging_on)
    st = os.stat(path)
    return SnapshotInfo(path, memory, header.id_hex, state.base_path, st.st_size, st.st_blocks * 512, mem.size,
                        stored // PAGE_SIZE, guest_count, sorted(vmm_pages), time.monotonic() - t0)
