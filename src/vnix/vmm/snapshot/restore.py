"""Rebuilding a machine from a snapshot (``Machine.from_snapshot``), in this order:

1. the configuration saved in the snapshot, with the overrides of a clone (its own disks, taps
   and MACs, vsock socket) put in place of the saved ones (same number of each);
2. a KVM VM, then guest RAM from the snapshot (copied, or mapped MAP_PRIVATE from the file; a
   mapping reads nothing up front) registered as KVM slots *before* the TSS, identity map,
   irqchip and PIT exist (measured here, 32 MiB guest: slots then TSS, irqchip, PIT 0.15 ms in
   all; the same slots added after the irqchip 11 ms). The PIT needs the irqchip (KVM_CREATE_PIT2
   fails with ENOENT before it) and costs ~0.05 ms anywhere after it. Slots get dirty logging
   unless ``dirty_log=False`` (clones), so the next snapshot can be a diff. Nothing here depends
   on the overrides: :func:`prepare_vm` does this step ahead of time (a clone server's idle
   pre-forked children), before the machine object of step 1 exists;
3. (no GSI routing yet: one KVM_SET_GSI_ROUTING at the end of step 6 carries the legacy routes
   and every MSI route; each commit costs ~0.4 ms here and a device restore made one per vector);
4. the devices built from the configuration, each PCI function's BAR0 and command register put
   at their saved values *before* the BAR is first mapped, so each queue-notify ioeventfd is
   registered once, at the address the guest uses (not at the default address, then again);
5. the vCPUs (created here, or already by :func:`prepare_vm`), each given its saved state
   (:func:`vnix.vmm.vcpu.restore_vcpu_state`);
6. PIC, IOAPIC and PIT state; then each device's ``restore``: serial (FIFO included), RTC,
   i8042, the PCI host's address register, every virtio-pci function (config space, BAR,
   MSI-X, GSI routes, status, queues, the device's own state), and every queue of a running
   device kicked once so requests the guest posted before the snapshot are taken;
7. kvmclock last (KVM_SET_CLOCK), right before the vCPU threads exist: the guest's clock goes on
   from where it was saved, the time the snapshot spent on disk does not pass for it (the TSC,
   restored with the MSRs, likewise).
"""
from __future__ import annotations

import copy
import os
from time import perf_counter as _now

from vnix.kvm import Kvm, KvmError
from vnix.kvm import ioctls as k
from vnix.kvm import structs as ks
from vnix.vmm import VmmError
from vnix.vmm.config import DiskConfig, MachineConfig, NetConfig, VsockConfig
from vnix.vmm.devices.virtio.constants import STATUS_DRIVER_OK
from vnix.vmm.snapshot.dirty import DirtyTracker
from vnix.vmm.snapshot.errors import SnapshotError, SnapshotMismatch
from vnix.vmm.snapshot.load import MachineSnapshot
from vnix.vmm.record import Record
from vnix.vmm.vcpu import restore_vcpu_registers, restore_vcpu_state, restore_vcpu_timed_state

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    from vnix.vmm.console import Console
    from vnix.vmm.machine import Machine
    from vnix.vmm.stats import Stats


class SnapshotOverrides(Record):
    """What a clone changes. Lists replace the saved ones whole and must be as long (the guest
    has that many devices); a net's MAC, when given, is what the guest reads from then on."""

    __slots__ = ("disks", "nets", "vsock")

    def __init__(self, disks: list[DiskConfig] | None = None, nets: list[NetConfig] | None = None,
                 vsock: VsockConfig | None = None) -> None:
        self.disks, self.nets, self.vsock = disks, nets, vsock


def effective_config(saved: MachineConfig, overrides: SnapshotOverrides | None) -> MachineConfig:
    cfg = copy.copy(saved)
    if overrides is None:
        return cfg
    if overrides.disks is not None:
        if len(overrides.disks) != len(saved.disks):
            raise SnapshotMismatch(f"the snapshot has {len(saved.disks)} disks, {len(overrides.disks)} given")
        cfg.disks = list(overrides.disks)
    if overrides.nets is not None:
        if len(overrides.nets) != len(saved.nets):
            raise SnapshotMismatch(f"the snapshot has {len(saved.nets)} network devices, {len(overrides.nets)} given")
        cfg.nets = []
        for net, old in zip(overrides.nets, saved.nets):
            net = copy.copy(net)
            net.mac = net.mac or old.mac
            cfg.nets.append(net)
    if overrides.vsock is not None:
        if saved.vsock is None:
            raise SnapshotMismatch("the snapshot has no vsock device")
        cfg.vsock = overrides.vsock
    return cfg


def _check_devices(cfg: MachineConfig) -> None:
    """What :meth:`MachineConfig.validate` checks of the devices (the kernel is not needed)."""
    from vnix.vmm import ConfigError

    for disk in cfg.disks:
        if not os.path.isfile(disk.path):
            raise ConfigError(f"disk {disk.path} does not exist")
    for net in cfg.nets:
        net.validate()
    if cfg.vsock is not None:
        cfg.vsock.validate()


def _no_loader(*args: object) -> object:
    raise SnapshotError("a restored machine loads no kernel")


class PreparedVm:
    """Step 2 of a restore done ahead of time (:func:`prepare_vm`): a KVM VM with the snapshot's
    RAM in its slots, TSS, identity map, irqchip and PIT, and its vCPUs created (no state set:
    a TSC set now would run on while the child waits). Nothing in it depends on a clone's
    overrides, so a clone server's idle pre-forked child makes one before its request comes."""

    __slots__ = ("snap", "backing", "dirty_log", "kvm", "vm", "mem", "vcpus", "steps_ms", "deferred")

    def __init__(self, snap: MachineSnapshot, backing: str, dirty_log: bool, kvm: Kvm, vm: object,
                 mem: object, vcpus: list | None, steps_ms: dict[str, float]) -> None:  # type: ignore[type-arg]
        self.snap, self.backing, self.dirty_log = snap, backing, dirty_log
        self.kvm, self.vm, self.mem, self.vcpus, self.steps_ms = kvm, vm, mem, vcpus, steps_ms
        self.deferred: list[Callable[[], None]] = []  # cleanup for after the restored VM runs

    def run_deferred(self) -> None:
        """What :func:`rehearse` left (its throwaway VM's destruction): call once the VM runs."""
        while self.deferred:
            self.deferred.pop(0)()


class _Steps:
    """Milliseconds each named step took, written into ``into`` (``restore_steps_ms``)."""

    __slots__ = ("into", "t")

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.t = into, _now()

    def __call__(self, name: str) -> None:
        now = _now()
        self.into[name] = (now - self.t) * 1000
        self.t = now

    def restart(self) -> None:
        self.t = _now()


def _prepare(snap: MachineSnapshot, memory_backing: str, dirty_log: bool, steps: dict[str, float],
             ahead: bool = False) -> PreparedVm:
    from vnix.vmm.machine import IDENTITY_MAP_ADDR, TSS_ADDR

    step = _Steps(steps)
    kvm = Kvm()
    kvm.require()
    vm = kvm.create_vm()
    step("kvm_open_create_vm")
    mem = snap.open_memory(memory_backing)  # type: ignore[arg-type]
    step("open_memory")
    for slot, region in enumerate(mem):
        vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_address,
                                  k.KVM_MEM_LOG_DIRTY_PAGES if dirty_log else 0)
    step("memory_slots")
    vm.set_tss_addr(TSS_ADDR)
    vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
    step("tss_identity_map")
    vm.create_irqchip()
    step("create_irqchip")
    vm.create_pit2()
    step("create_pit2")
    vcpus = None
    if ahead:
        vcpus = [vm.create_vcpu(vstate.id) for vstate in snap.state.vcpus]
        step("create_vcpus")
        for vcpu, vstate in zip(vcpus, snap.state.vcpus):
            restore_vcpu_registers(vcpu, vstate)  # the LAPIC, MSRs (TSC), events: step 5
        step("vcpu_registers")
    return PreparedVm(snap, memory_backing, dirty_log, kvm, vm, mem, vcpus, steps)


def prepare_vm(snap: MachineSnapshot, *, memory_backing: Literal["copy", "private-mmap"] = "copy",
               dirty_log: bool = True, rehearse_first: bool = False) -> PreparedVm:
    """Step 2 alone, each vCPU created and given the part of its state that does not run on
    (:func:`vnix.vmm.vcpu.restore_vcpu_registers`; the rest in step 5), for a later
    :func:`restore_machine` of ``snap`` with ``prepared=`` (same backing and ``dirty_log``);
    its times end up in ``restore_steps_ms`` as ``prepared_*``. ``rehearse_first``: run
    :func:`rehearse` before (in a clone server's forked child); its throwaway VM is destroyed
    by :meth:`PreparedVm.run_deferred`, which the caller runs once the restored VM runs."""
    steps: dict[str, float] = {}
    deferred: list[Callable[[], None]] = []
    if rehearse_first:
        t = _now()
        rehearse(snap, memory_backing=memory_backing, defer=deferred)
        steps["rehearsal"] = (_now() - t) * 1000
    try:
        prepared = _prepare(snap, memory_backing, dirty_log, steps, ahead=True)
        prepared.deferred = deferred
        return prepared
    except KvmError as exc:
        raise SnapshotError(f"cannot restore the machine: {exc}") from None
    except (ValueError, VmmError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"cannot restore the machine: {exc}") from None


def rehearse(snap: MachineSnapshot, *, memory_backing: Literal["copy", "private-mmap"] = "copy",
             defer: list[Callable[[], None]] | None = None) -> bool:
    """Restore ``snap`` once into a throwaway VM and take it apart, touching nothing outside
    this process: its disks opened read-only, its NICs on no network (NetConfig kind ``none``),
    its vsock listening in a private temporary directory, no queue kicked, no vCPU run.

    What for: a clone server's child is a ``fork()`` of a process holding the VMM's code and
    the loaded snapshot, and the first time the restore path runs there, every Python object it
    touches (a reference count written) unshares a page: ~600 copy-on-write faults, about half
    of a request's 5 ms in :func:`restore_machine` measured here. Done by an idle child before
    its request comes, they are paid at idle priority and the request's restore runs on warm
    pages; those pages would be copied by the request anyway, so a clone's unique memory grows
    by what the rehearsal alone touched (~1.7 MiB measured). Returns False (the request then
    pays the faults) if the rehearsal failed.

    The devices' threads and host fds are closed here; destroying the throwaway KVM VM (its
    vCPUs, slots and RAM mapping: 20-30 ms in the kernel here) is put in ``defer`` when given,
    for the caller to run once its own VM runs (a clone, after its answer)."""
    import shutil
    import tempfile

    from vnix.vmm.console import Console
    from vnix.vmm.machine import Machine
    from vnix.vmm.stats import Stats

    saved = snap.config
    tmp = tempfile.mkdtemp(prefix="vnix-rehearsal-")
    overrides = SnapshotOverrides(
        disks=[DiskConfig(d.path, True, d.format) for d in saved.disks] or None,
        nets=[NetConfig("none", mac=n.mac) for n in saved.nets] or None,
        vsock=VsockConfig(cid=saved.vsock.cid, uds=os.path.join(tmp, "vsock")) if saved.vsock is not None else None)
    built: list[Machine] = []

    def machine(*args: object, **kwargs: object) -> Machine:  # the machine, even if its restore fails
        built.append(Machine(*args, **kwargs))  # type: ignore[arg-type]
        return built[-1]

    prepared = console = None
    try:
        prepared = _prepare(snap, memory_backing, False, {}, ahead=True)
        console = Console(lambda stop: None, stdin_fd=-1, stdout_fd=-1)  # no stdio: the guest never runs
        restore_machine(machine, snap, Stats(_now()), memory_backing=memory_backing,  # type: ignore[arg-type]
                        overrides=overrides, console=console, dirty_log=False, prepared=prepared, rehearsal=True)
        return True
    except (VmmError, OSError, ValueError) as exc:
        import logging

        logging.getLogger(__name__).warning("restore rehearsal failed (the request pays its faults): %s", exc)
        return False
    finally:
        while built:
            pci = built.pop().pci
            if pci is not None:
                pci.close()  # device threads and host fds
        pci = console = None  # the console reaches the machine (the UART's interrupt line)
        shutil.rmtree(tmp, ignore_errors=True)
        if prepared is not None:
            if defer is None:
                _destroy(prepared)
            else:
                defer.append(lambda p=prepared: _destroy(p))  # type: ignore[misc]
        prepared = None


def _destroy(prepared: PreparedVm) -> None:
    """Close a prepared VM that will not run: vCPUs, VM, /dev/kvm, then its RAM mapping (after
    a collection: the torn-down devices' views into guest RAM are in reference cycles)."""
    import gc

    for vcpu in prepared.vcpus or ():
        vcpu.close()
    prepared.vm.close()  # type: ignore[attr-defined]
    prepared.kvm.close()
    gc.collect()
    prepared.mem.close()  # type: ignore[attr-defined]


def restore_machine(cls: type[Machine], snap: MachineSnapshot, stats: Stats, *,
                    memory_backing: Literal["copy", "private-mmap"] = "copy",
                    overrides: SnapshotOverrides | None = None, console: Console | None = None,
                    dirty_log: bool = True, prepared: PreparedVm | None = None,
                    rehearsal: bool = False) -> Machine:
    """``dirty_log=False`` (clones): slots without KVM_MEM_LOG_DIRTY_PAGES (no bitmap to keep
    for each write), so the machine's next snapshot is a full one. ``prepared``: step 2 already
    done by :func:`prepare_vm` (a VM is used by one restore only). ``rehearsal``
    (:func:`rehearse`): no queue is kicked, so no request the guest posted is served, and no
    device's ``after_restore`` runs (no vsock transport reset sent)."""
    from vnix.vmm.machine import MachineParts

    t_start = _now()
    state = snap.state
    saved = snap.config  # parsed once by load_snapshot
    cfg = effective_config(saved, overrides)
    _check_devices(cfg)
    if len(state.vcpus) != cfg.cpus:
        raise SnapshotError(f"snapshot has {len(state.vcpus)} vCPU states for {cfg.cpus} vCPUs")
    machine = cls(cfg, stats, loader=_no_loader, console=console)  # type: ignore[arg-type]
    steps = machine.restore_steps_ms
    steps["config_machine_object"] = (_now() - t_start) * 1000
    step = _Steps(steps)
    try:
        if prepared is None:
            prepared = _prepare(snap, memory_backing, dirty_log, steps)
            step.restart()
        elif prepared.snap is not snap or prepared.dirty_log != dirty_log or prepared.backing != memory_backing:
            raise SnapshotError("the prepared VM was made for another snapshot or memory backing")
        else:
            steps.update({f"prepared_{name}": ms for name, ms in prepared.steps_ms.items()})  # before the request
        kvm, vm, mem = prepared.kvm, prepared.vm, prepared.mem
        stats.guest_ram_bytes = mem.size
        placement = {name: (st.bar0, st.command) for name, st in state.pci.items()}
        machine._add_devices(vm, mem, placement)
        step("add_devices")
        names = set(machine.pci.functions) if machine.pci is not None else set()
        if names != set(state.pci):
            raise SnapshotMismatch(f"snapshot devices {sorted(state.pci)} do not match the machine's {sorted(names)}")
        vcpus = []
        for i, vstate in enumerate(state.vcpus):
            if prepared.vcpus is not None:
                vcpu = prepared.vcpus[i]
                restore_vcpu_timed_state(vcpu, vstate)
            else:
                vcpu = vm.create_vcpu(vstate.id)
                restore_vcpu_state(vcpu, vstate)
            vcpus.append(vcpu)
        step("vcpus")
        for chip, raw in zip((0, 1, 2), state.vm.irqchips):
            vm.set_irqchip(_exact(ks.kvm_irqchip, raw, "irqchip"))
        vm.set_pit2(_exact(ks.kvm_pit_state2, state.vm.pit2, "PIT"))
        step("irqchip_pit_state")
        machine.serial.restore(state.serial)
        machine.rtc.restore(state.rtc)
        machine.i8042.restore(state.i8042)
        step("legacy_devices")
        if machine.pci is not None:
            machine.pci.host.address = state.pci_address
            _restore_pci(machine, state.pci, overrides)
            machine.pci.router.release()  # the legacy routes and every MSI route: one KVM_SET_GSI_ROUTING
        else:
            machine.set_gsi_routes(vm, [])
        step("pci_devices_gsi_routes")
        machine.parts = MachineParts(kvm, vm, mem, vcpus)
        machine._make_threads(vcpus, mem)
        step("vcpu_threads")
        if dirty_log:
            machine.dirty = DirtyTracker(vm, mem, machine.pci.functions if machine.pci is not None else {},
                                         snap.path, snap.snapshot_id).start(True)
        step("dirty_tracker")
        if not rehearsal:
            _kick_queues(machine)
            _after_restore(machine)
        vm.set_clock(ks.kvm_clock_data(clock=state.vm.clock, flags=0))
        step("kick_queues_clock")
    except KvmError as exc:
        raise SnapshotError(f"cannot restore the machine: {exc}") from None
    except (ValueError, VmmError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"cannot restore the machine: {exc}") from None
    stats.mark("vm_created")
    stats.mark("vm_restored")
    return machine


def _exact(cls: type, raw: bytes, what: str):  # type: ignore[no-untyped-def]
    import ctypes

    if not isinstance(raw, bytes) or len(raw) != ctypes.sizeof(cls):
        raise SnapshotError(f"snapshot {what} state has the wrong size")
    return cls.from_buffer_copy(raw)


def _restore_pci(machine: Machine, states: dict, overrides: SnapshotOverrides | None) -> None:  # type: ignore[type-arg]
    for name, fn in machine.pci.functions.items():
        st = states[name]
        if st.slot != fn.slot:
            raise SnapshotMismatch(f"device {name} sits in PCI slot {fn.slot}, the snapshot has it in {st.slot}")
        if len(st.msix_table) != fn.msix.count or len(st.control.queues) != len(fn.control.queues):
            raise SnapshotMismatch(f"device {name} has another shape than in the snapshot")
        fn.restore(st)
        dev = fn.device
        if overrides is not None and name.startswith("net") and overrides.nets is not None:
            mac = overrides.nets[int(name[3:])].mac
            if mac:
                dev.mac = mac  # type: ignore[attr-defined]
        if overrides is not None and name == "vsock" and overrides.vsock is not None:
            dev.cid = overrides.vsock.cid  # type: ignore[attr-defined]


def _kick_queues(machine: Machine) -> None:
    """Requests posted before the snapshot whose notification the old process never handled."""
    for fn in machine.pci.functions.values():
        if fn.control.status & STATUS_DRIVER_OK and fn.device.active:
            for q, fd in zip(fn.control.queues, fn.notify_fds):
                if q.ready:
                    os.eventfd_write(fd, 1)


def _after_restore(machine: Machine) -> None:
    """Each device's :meth:`~vnix.vmm.devices.virtio.device.VirtioDevice.after_restore` (vsock:
    the transport reset event, so the guest drops the streams the snapshot could not keep)."""
    for fn in machine.pci.functions.values() if machine.pci is not None else ():
        fn.device.after_restore()
