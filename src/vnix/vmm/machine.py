"""Build and run one VM: KVM objects, guest RAM, devices, vCPUs, the boot state.

Order of construction (each step's failure is reported with what failed):

1. open /dev/kvm and check every capability vnix relies on (named if missing);
2. create the VM; TSS at 0xfffbd000 and identity-map page at 0xfffbc000 (needed by Intel VMX for
   real mode; the three TSS pages and the EPT identity page sit just below the 4 GiB BIOS area,
   as in Firecracker and QEMU); in-kernel PIC+IOAPIC (KVM_CREATE_IRQCHIP) and PIT (KVM_CREATE_PIT2);
3. guest RAM from ``arch.x86.layout.ram_regions`` in :class:`GuestMemory`, one KVM slot a region;
4. devices on the port-I/O bus (COM1, i8042, CMOS, pvpanic, ACPI sleep/reset, debug-exit);
5. vCPUs: CPUID from ``arch.x86.cpuid.guest_cpuid`` on each, boot MSRs, LAPIC LINT0 = ExtINT and
   LINT1 = NMI (what Firecracker's ``set_lint`` does, so the PIC's interrupts reach vCPU 0);
6. the kernel via ``arch.x86.boot.load_kernel``; its :class:`BootCpuState` goes into vCPU 0.
   Application processors stay in KVM_MP_STATE_UNINITIALIZED until the guest sends INIT/SIPI.
"""
from __future__ import annotations

import ctypes
import struct
import sys
import threading

import _signal  # not ``signal``: it imports ``enum`` (~1.5 ms of start-up) for the same functions

from vnix.kvm import Kvm, Vcpu, Vm
from vnix.kvm import ioctls as k
from vnix.kvm import structs as ks
from vnix.vmm import BootError
from vnix.vmm.arch.x86.cpu_state import BootCpuState, CpuidEntry, MsrEntry, Segment
from vnix.vmm.config import MachineConfig
from vnix.vmm.console import Console
from vnix.vmm.devices.bus import MmioBus, PioBus
from vnix.vmm.devices.legacy import acpi, debug_exit, i8042, pvpanic, rtc, serial
from vnix.vmm.exitcodes import POWEROFF, REBOOT, VMM_FAILURE, Stop
from vnix.vmm.memory import GuestMemory
from vnix.vmm.stats import Stats
from vnix.vmm.vcpu import VcpuThread, install_kick_handler

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, Protocol

    from vnix.vmm.snapshot import MachineSnapshot, SnapshotOverrides
    from vnix.vmm.snapshot.dirty import DirtyTracker

START_WAIT = 1.0  # s: Machine.run's on_running runs by then even if vCPU 0 never entered KVM_RUN
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000

# Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, 10.5.1 "Local Vector Table").
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7

I8042_PORT_COUNT = 5  # 0x60..0x64 (0x61 is the PIT's, handled in the kernel before us)
CMOS_PORT_COUNT = 2


if TYPE_CHECKING:
    class KernelLoader(Protocol):
        def __call__(
            self, mem: GuestMemory, kernel_path: str, initrd_path: str | None, cmdline: str, nr_vcpus: int
        ) -> BootCpuState: ...


# -- the pieces that come from vnix.vmm.arch.x86 ---------------------------------------------------
def ram_layout(mem_bytes: int) -> list[tuple[int, int]]:
    from vnix.vmm.arch.x86.layout import ram_regions

    return ram_regions(mem_bytes)


def linux_loader(mem: GuestMemory, kernel_path: str, initrd_path: str | None, cmdline: str, nr_vcpus: int) -> BootCpuState:
    """The boot protocols of ``arch.x86.boot``. On a software-nested host (kvm_pvm) a Linux
    kernel also gets the command-line options that keep it off instructions that KVM cannot
    emulate there (``hostcpu.linux_cmdline_workarounds``); the VMM says so on stderr."""
    from vnix.vmm.arch.x86.boot import load_kernel
    from vnix.vmm.arch.x86.hostcpu import host_is_software_nested, linux_cmdline_workarounds

    nested = host_is_software_nested()
    extra = linux_cmdline_workarounds(nested)
    # Where guest kernel code is emulated, the kernel's own decompressor would take hours:
    # unpack a bzImage's payload here and load the vmlinux inside instead.
    state = load_kernel(mem, kernel_path, initrd_path, cmdline, nr_vcpus, i8042=True, linux_cmdline_extra=extra,
                        unpack_on_host=nested)
    if state.cmdline != cmdline:
        added = state.cmdline[len(cmdline):].strip() if state.cmdline.startswith(cmdline.strip()) else state.cmdline
        print(f"vnix-vmm: software-nested KVM (kvm_pvm): added '{added}' to the Linux command line", file=sys.stderr,
              flush=True)
    return state


def _guest_cpuid(supported: list[CpuidEntry], vcpu_id: int, nr_vcpus: int) -> list[CpuidEntry]:
    try:
        from vnix.vmm.arch.x86.cpuid import guest_cpuid
    except ImportError:  # the CPUID policy has not landed: give the guest what KVM offers
        return supported
    return guest_cpuid(supported, vcpu_id, nr_vcpus)


def _boot_msrs() -> list[MsrEntry]:
    try:
        from vnix.vmm.arch.x86.msrs import boot_msrs
    except ImportError:
        return []
    return boot_msrs()


# -- a flat protected-mode image (developer and test guests) ---------------------------------------
FLAT_LOAD_ADDR = 0x100000


def flat_loader(mem: GuestMemory, kernel_path: str, initrd_path: str | None, cmdline: str, nr_vcpus: int) -> BootCpuState:
    """Load a raw binary at 1 MiB and enter it in 32-bit protected mode, paging off, flat 4 GiB
    segments, interrupts off, esp = 1 MiB (the ``--flat`` option; kvmtool has a similar mode)."""
    try:
        with open(kernel_path, "rb") as f:
            image = f.read(mem.size + 1)
    except OSError as exc:
        raise BootError(f"kernel {kernel_path}: {exc.strerror}") from None
    if not image or not mem.is_valid(FLAT_LOAD_ADDR, len(image)):
        raise BootError(f"flat image {kernel_path} is empty or does not fit in guest RAM at 1 MiB")
    mem.write(FLAT_LOAD_ADDR, image)
    code = Segment(selector=0x08, type=0xB, db=1)
    data = Segment(selector=0x10, type=0x3, db=1)
    return BootCpuState(
        rip=FLAT_LOAD_ADDR, rsp=FLAT_LOAD_ADDR, cr0=0x11,  # PE | ET
        cs=code, ds=data, es=data, fs=data, gs=data, ss=data,
        tr=Segment(type=0xB, s=0, g=0, limit=0xFFFF), ldt=Segment(type=0x2, s=0, g=0, limit=0xFFFF),
    )


# -- conversions between the arch dataclasses and KVM structs -------------------------------------
def _kvm_segment(seg: Segment) -> ks.kvm_segment:
    return ks.kvm_segment(
        base=seg.base, limit=seg.limit, selector=seg.selector, type=seg.type, present=seg.present,
        dpl=seg.dpl, db=seg.db, s=seg.s, l=seg.l, g=seg.g, avl=seg.avl, unusable=seg.unusable,
    )


def load_boot_state(vcpu: Vcpu, state: BootCpuState) -> None:
    sregs = vcpu.get_sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        setattr(sregs, name, _kvm_segment(getattr(state, name)))
    sregs.gdt.base, sregs.gdt.limit = state.gdt.base, state.gdt.limit
    sregs.idt.base, sregs.idt.limit = state.idt.base, state.idt.limit
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
    vcpu.set_sregs(sregs)
    regs = ks.kvm_regs(rip=state.rip, rsp=state.rsp, rbp=state.rsp, rsi=state.rsi, rbx=state.rbx,
                       rflags=state.rflags | 0x2)
    vcpu.set_regs(regs)


def _to_kvm_cpuid(entries: list[CpuidEntry]) -> list[ks.kvm_cpuid_entry2]:
    return [ks.kvm_cpuid_entry2(function=e.function, index=e.index, flags=e.flags, eax=e.eax, ebx=e.ebx,
                                ecx=e.ecx, edx=e.edx) for e in entries]


def _from_kvm_cpuid(entries: list[ks.kvm_cpuid_entry2]) -> list[CpuidEntry]:
    return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in entries]


def set_lint(vcpu: Vcpu) -> None:
    """LINT0 = ExtINT (the 8259's output), LINT1 = NMI: the virtual-wire wiring of a PC."""
    lapic = vcpu.get_lapic()
    raw = bytearray(bytes(lapic))
    for offset, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
        (value,) = struct.unpack_from("<I", raw, offset)
        value = (value & ~0x700) | (mode << 8)
        struct.pack_into("<I", raw, offset, value)
    vcpu.set_lapic(ks.kvm_lapic_state.from_buffer_copy(raw))


class MachineParts:
    """The KVM handles and guest memory of a built machine (a plain class: every dataclass costs
    the VMM's start-up about a millisecond)."""

    def __init__(self, kvm: Kvm, vm: Vm, mem: GuestMemory, vcpus: list[Vcpu]) -> None:
        self.kvm, self.vm, self.mem, self.vcpus = kvm, vm, mem, vcpus


class Machine:
    """One VM, built from a validated :class:`MachineConfig`."""

    def __init__(
        self,
        config: MachineConfig,
        stats: Stats,
        *,
        loader: KernelLoader = linux_loader,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self._loader = loader
        self._stop: Stop | None = None
        self._stopped = threading.Event()
        self._started = threading.Event()  # the boot vCPU entered KVM_RUN, or the VM stopped
        self._lock = threading.Lock()
        self.console = console or Console(self.request_stop, on_first_byte=lambda: stats.mark("first_serial_byte"))
        self.pio = PioBus()
        self.mmio = MmioBus()
        self.threads: list[VcpuThread] = []
        self.parts: MachineParts | None = None
        self.paused = False
        self._pause_lock = threading.Lock()  # not _lock: a vCPU may request_stop while we wait for it
        self.graceful_stop = False  # Ctrl-Alt-Del sent through the control API: a reboot means stop
        self.api: object | None = None  # the control API server (vnix.vmm.api), if --api-sock
        self.dirty: DirtyTracker | None = None  # vnix.vmm.snapshot: pages changed since the last snapshot
        self.restore_steps_ms: dict[str, float] = {}  # a restored machine: ms each step of restore_machine took

    # -- stopping -------------------------------------------------------------------------------
    def request_stop(self, stop: Stop) -> None:
        """Any thread: the first reason to stop wins; every vCPU is told to stop."""
        with self._lock:
            if self._stop is not None:
                return
            if self.graceful_stop and stop.status == REBOOT:
                # Linux answers Ctrl-Alt-Del by rebooting (its default C-A-D action); the VMM
                # does not restart guests, so after a stop request that is the guest's power-off.
                stop = Stop(POWEROFF, f"stopped gracefully ({stop.reason} after Ctrl-Alt-Del)", report=False)
            self._stop = stop
        self._started.set()
        for t in self.threads:
            t.stop()
        self._stopped.set()

    @property
    def stopping(self) -> bool:
        return self._stop is not None or self.graceful_stop

    # -- pausing (the control API; a snapshot pauses first) ----------------------------------
    def pause(self) -> None:
        """Every vCPU out of KVM_RUN and held there, then every device thread held between two
        requests (queues quiescent, as a snapshot needs); devices keep their state."""
        with self._pause_lock:
            for t in self.threads:
                t.pause()
            for fn in self._pci_functions():
                fn.worker.pause()
            self.paused = True

    def resume(self) -> None:
        with self._pause_lock:
            for fn in self._pci_functions():
                fn.worker.resume()
            for t in self.threads:
                t.resume()
            self.paused = False

    def _pci_functions(self) -> list:  # type: ignore[type-arg]
        pci = getattr(self, "pci", None)
        return list(pci.functions.values()) if pci is not None else []

    # -- snapshots (vnix.vmm.snapshot) ----------------------------------------------------------
    @classmethod
    def from_snapshot(cls, snap: MachineSnapshot, stats: Stats, *,
                      memory_backing: Literal["copy", "private-mmap"] = "copy",
                      overrides: SnapshotOverrides | None = None, console: Console | None = None) -> Machine:
        """A machine rebuilt from a loaded snapshot (:func:`vnix.vmm.snapshot.load_snapshot`),
        ready to :meth:`run`: see :func:`vnix.vmm.snapshot.restore.restore_machine`."""
        from vnix.vmm.snapshot.restore import restore_machine

        return restore_machine(cls, snap, stats, memory_backing=memory_backing, overrides=overrides,
                               console=console)

    # -- building -------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.config
        kvm = Kvm()
        kvm.require()
        vm = kvm.create_vm()
        # RAM slots first, as Firecracker does: once the TSS / identity-map pages and the irqchip
        # exist, each KVM_SET_USER_MEMORY_REGION costs 5-12 ms here (0.15 ms before them).
        mem_bytes = cfg.memory_mib * 1024 * 1024
        mem = GuestMemory(ram_layout(mem_bytes))
        for slot, region in enumerate(mem):
            vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_address)
        self.stats.guest_ram_bytes = mem.size
        vm.set_tss_addr(TSS_ADDR)
        vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        self.set_gsi_routes(vm, [])

        self._add_devices(vm, mem)

        supported = _from_kvm_cpuid(kvm.get_supported_cpuid())
        msrs = [(m.index, m.value) for m in _boot_msrs()]
        vcpus = []
        for vcpu_id in range(cfg.cpus):
            vcpu = vm.create_vcpu(vcpu_id)
            vcpu.set_cpuid2(_to_kvm_cpuid(_guest_cpuid(supported, vcpu_id, cfg.cpus)))
            if msrs:
                vcpu.set_msrs(msrs)
            set_lint(vcpu)
            if vcpu_id:
                vcpu.set_mp_state(k.KVM_MP_STATE_UNINITIALIZED)
            vcpus.append(vcpu)

        state = self._loader(mem, cfg.kernel, cfg.initrd, cfg.cmdline, cfg.cpus)
        load_boot_state(vcpus[0], state)
        self.parts = MachineParts(kvm, vm, mem, vcpus)
        self._make_threads(vcpus, mem)
        self.stats.mark("vm_created")

    def _make_threads(self, vcpus: list[Vcpu], mem: GuestMemory) -> None:
        for vcpu in vcpus:
            on_first = self._first_kvm_run if vcpu.id == 0 else None
            self.threads.append(
                VcpuThread(vcpu, self.pio, self.mmio, self.stats.counters_for_vcpu(), self.request_stop, on_first,
                           read_guest=mem.read)
            )

    def set_gsi_routes(self, vm: Vm, extra: list[ks.kvm_irq_routing_entry]) -> None:
        """Install the PC's legacy routes (``layout.legacy_gsi_routes``: ISA IRQ 0 -> IOAPIC pin 2
        as the MADT says) plus ``extra`` (MSI routes of devices). KVM_SET_GSI_ROUTING replaces
        the whole table, so a device that adds routes calls this with all of its own."""
        from vnix.kvm.vm import routing_irqchip
        from vnix.vmm.arch.x86.layout import legacy_gsi_routes

        vm.set_gsi_routing([routing_irqchip(gsi, chip, pin) for gsi, chip, pin in legacy_gsi_routes()] + extra)

    def _add_devices(self, vm: Vm, mem: GuestMemory, pci_placement: dict[str, tuple[int, int]] | None = None) -> None:
        def irq(line: int) -> Callable[[int], None]:
            return lambda level: vm.irq_line(line, level)

        self.serial = serial.Serial(self.console.write, irq(serial.COM1_IRQ))
        self.console.attach(self.serial.receive, self.serial.room)
        self.pio.insert(serial.COM1_PORT, serial.PORT_COUNT, self.serial, "serial (COM1)")
        reset = lambda: self.request_stop(Stop(REBOOT, "guest reset (i8042)"))  # noqa: E731
        self.i8042 = i8042.I8042(reset, irq(i8042.IRQ_KEYBOARD))
        self.pio.insert(i8042.DATA_PORT, I8042_PORT_COUNT, _I8042Window(self.i8042), "i8042")
        below_4g = sum(min(r.end, 1 << 32) - r.guest_addr for r in mem if r.guest_addr < 1 << 32)
        self.rtc = rtc.Rtc(below_4g, mem.size - below_4g)
        self.pio.insert(rtc.INDEX_PORT, CMOS_PORT_COUNT, self.rtc, "cmos")
        self.pio.insert(pvpanic.PORT, 1, pvpanic.PvPanic(self.request_stop), "pvpanic")
        self.pio.insert(acpi.BASE_PORT, acpi.PORT_COUNT, acpi.AcpiRegisters(self.request_stop), "acpi")
        if self.config.debug_exit:
            self.pio.insert(debug_exit.PORT, debug_exit.PORT_COUNT, debug_exit.DebugExit(self.request_stop), "isa-debug-exit")
        # -- hook (issue 3, virtio): PCI host bridge + virtio-pci devices from the MachineConfig --
        # Without a virtio device there is no PCI bus and the PCI/virtio code is not imported.
        self.pci = None
        if self.config.has_virtio():
            from vnix.vmm.devices.pci.setup import add_pci_devices

            self.pci = add_pci_devices(self.pio, self.mmio, mem, vm, lambda extra: self.set_gsi_routes(vm, extra),
                                       self.config, pci_placement)

    # -- running --------------------------------------------------------------------------------
    def _first_kvm_run(self) -> None:
        self.stats.mark("first_kvm_run")
        self._started.set()

    def run(self, on_running: Callable[[], None] | None = None) -> Stop:
        """Start the vCPUs and the console; block until the VM stops; return why.

        ``on_running`` is called on this thread once the boot vCPU has entered KVM_RUN (or
        after ``START_WAIT`` seconds without that): work that need not delay the guest's first
        instruction (the control API's server). Not called if the VM stops first; if it
        raises, the VM stops with VMM_FAILURE."""
        install_kick_handler()
        _signal.signal(_signal.SIGTERM, lambda signum, frame: self.request_stop(Stop(POWEROFF, "stopped by SIGTERM")))
        self.console.start()
        try:
            for t in self.threads:
                t.start()
            if on_running is not None:
                self._started.wait(START_WAIT)
                if not self._stopped.is_set():
                    try:
                        on_running()
                    except Exception as exc:  # a VMM bug: a traceback, and the VM ends
                        import traceback

                        traceback.print_exc(file=sys.stderr)
                        self.request_stop(Stop(VMM_FAILURE, f"internal error: {exc!r}"))
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.request_stop(Stop(POWEROFF, "interrupted"))
        finally:
            for t in self.threads:
                t.stop()
            for t in self.threads:
                t.join(2.0)
            self.console.restore()
        assert self._stop is not None
        self._account()
        self.stats.unassigned = {"pio_writes": dict(self.pio.unassigned_writes), "pio_reads": dict(self.pio.unassigned_reads),
                                 "mmio_writes": dict(self.mmio.unassigned_writes), "mmio_reads": dict(self.mmio.unassigned_reads)}
        self.stats.serial_bytes = self.serial.bytes_out
        return self._stop

    def _account(self) -> None:
        """Guest pages the host actually backs (mincore), so VMM overhead = RSS - this."""
        if self.parts is None:
            return
        self.stats.guest_resident_bytes = sum(_resident_bytes(r.host_address, r.size) for r in self.parts.mem)


from vnix.kvm._ioctl import _libc  # noqa: E402 - one CDLL for the process


def _resident_bytes(addr: int, size: int) -> int:
    pages = (size + 4095) // 4096
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
        return 0
    return bytes(vec).count(1) * 4096  # mincore: bit 0 = resident, other bits reserved (0)


class _I8042Window:
    """The i8042 sits at 0x60 and 0x64 only; 0x61-0x63 inside its bus window read as unassigned."""

    def __init__(self, dev: i8042.I8042) -> None:
        self.dev = dev

    def read(self, offset: int, size: int) -> bytes:
        return self.dev.read(offset, size) if offset in (0, 4) else b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        if offset in (0, 4):
            self.dev.write(offset, data)

