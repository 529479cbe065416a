"""One thread per vCPU: the run loop and its state machine.

States and the only legal transitions (``TRANSITIONS``)::

    created ──start──► running ◄──resume── paused
       │                  │ ──pause──────────►│
       └──────stop────────┴──────stop─────────┴──► stopped

A request (pause, resume, stop) changes the wanted state under a lock and *kicks* the thread out
of KVM_RUN: ``immediate_exit`` is set in the run page (so a thread about to enter KVM_RUN returns
at once) and SIGUSR1 is sent to the thread with ``pthread_kill`` (so a thread inside KVM_RUN
returns EINTR). The hot loop itself takes no lock: it looks at the wanted state only after an
``Intr`` exit.

The loop decodes each exit once (:mod:`vnix.kvm.exits`) and dispatches with ``match``: port I/O
to the PIO bus, MMIO to the MMIO bus; the exits that end the VM become a :class:`Stop`.
"""
from __future__ import annotations

import sys
import threading

# ``_signal`` rather than ``signal``: the latter wraps the same functions in ``enum`` types, and
# ``enum`` costs the VMM's start-up ~1.5 ms. Only ``signal``/``pthread_kill`` and plain numbers are used.
import _signal

from vnix.kvm import KvmError, Vcpu
from vnix.kvm import ioctls as k
from vnix.kvm.exits import (
    EXIT_HEAD_OFFSET,
    IO_DATA_MIN,
    Exit,
    FailEntry,
    Hlt,
    InternalError,
    Intr,
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Shutdown,
    SystemEvent,
    Unknown,
    complete_io_in,
    complete_mmio_read,
    decode,
    exit_head,
)
from vnix.vmm import VmmError
from vnix.vmm.devices.bus import MmioBus, PioBus
from vnix.vmm.record import Record
from vnix.vmm.exitcodes import (
    EMULATION_FAILURE,
    GUEST_PANIC,
    POWEROFF,
    REBOOT,
    TRIPLE_FAULT,
    VMM_FAILURE,
    Stop,
)
from vnix.vmm.stats import ExitCounters

TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ClassVar

KICK_SIGNAL = _signal.SIGUSR1
KVM_EXIT_IO = k.KVM_EXIT_IO
INT3 = b"\xcc"
BP_VECTOR = 3  # #BP, the breakpoint exception (SDM vol. 3A, table 6-1)
EFER_LMA = 1 << 10


class RunState:
    """A vCPU's run state: four constants with ``name`` and ``value`` like an ``enum.Enum``'s
    members (``enum`` itself costs the VMM's start-up ~1.5 ms)."""

    __slots__ = ("name", "value")
    CREATED: ClassVar[RunState]
    RUNNING: ClassVar[RunState]
    PAUSED: ClassVar[RunState]
    STOPPED: ClassVar[RunState]

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"<RunState.{self.name}: {self.value!r}>"


RunState.CREATED = RunState("CREATED", "created")
RunState.RUNNING = RunState("RUNNING", "running")
RunState.PAUSED = RunState("PAUSED", "paused")
RunState.STOPPED = RunState("STOPPED", "stopped")


TRANSITIONS: frozenset[tuple[RunState, RunState]] = frozenset(
    {
        (RunState.CREATED, RunState.RUNNING),
        (RunState.RUNNING, RunState.PAUSED),
        (RunState.PAUSED, RunState.RUNNING),
        (RunState.CREATED, RunState.STOPPED),
        (RunState.RUNNING, RunState.STOPPED),
        (RunState.PAUSED, RunState.STOPPED),
    }
)


class VcpuStateError(VmmError):
    """A run-state change the table does not allow."""


def install_kick_handler() -> None:
    """SIGUSR1 must not kill the process: install a no-op handler (main thread, once)."""
    _signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class VcpuThread:
    """Runs one :class:`vnix.kvm.Vcpu` on its own thread."""

    def __init__(
        self,
        vcpu: Vcpu,
        pio: PioBus,
        mmio: MmioBus,
        counters: ExitCounters,
        on_stop: Callable[[Stop], None],
        on_first_run: Callable[[], None] | None = None,
        read_guest: Callable[[int, int], bytes] | None = None,
    ) -> None:
        self.vcpu = vcpu
        self._read_guest = read_guest  # guest-physical reads, for looking at a failed instruction
        self.pio = pio
        self.mmio = mmio
        self.counters = counters
        self._on_stop = on_stop
        self._on_first_run = on_first_run
        self._cond = threading.Condition()
        self.state = RunState.CREATED
        self._wanted = RunState.CREATED
        self._thread: threading.Thread | None = None

    # -- state machine --------------------------------------------------------------------------
    def _request(self, to: RunState) -> None:
        with self._cond:
            if self._wanted == to:
                return
            if (self._wanted, to) not in TRANSITIONS:
                raise VcpuStateError(f"vCPU {self.vcpu.id}: cannot go from {self._wanted.value} to {to.value}")
            self._wanted = to
            self._cond.notify_all()
        self.kick()

    def start(self) -> bool:
        """Start the thread; False (and nothing started) if the vCPU was stopped before it ran
        (another vCPU ended the VM first)."""
        with self._cond:  # an RLock: the check and the transition are one step
            if self._wanted == RunState.STOPPED:
                return False
            self._request(RunState.RUNNING)
        self._thread = threading.Thread(target=self._main, name=f"vcpu{self.vcpu.id}", daemon=True)
        self._thread.start()
        return True

    def pause(self, timeout: float | None = 5.0) -> None:
        """Stop running guest code and wait until the thread is out of KVM_RUN."""
        self._request(RunState.PAUSED)
        with self._cond:
            self._cond.wait_for(lambda: self.state != RunState.RUNNING, timeout)

    def resume(self) -> None:
        self._request(RunState.RUNNING)

    def stop(self) -> None:
        if self._wanted != RunState.STOPPED:
            self._request(RunState.STOPPED)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def kick(self) -> None:
        """Make the thread leave (or not enter) KVM_RUN."""
        self.vcpu.immediate_exit = True
        thread = self._thread
        if thread is not None and thread.ident is not None and thread is not threading.current_thread():
            try:
                _signal.pthread_kill(thread.ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass  # the thread has already finished

    def _settle(self) -> bool:
        """After a kick: follow the wanted state. Returns False when the thread must end."""
        with self._cond:
            self.vcpu.immediate_exit = False
            while self._wanted == RunState.PAUSED:
                self.state = RunState.PAUSED
                self._cond.notify_all()
                self._cond.wait()
            if self._wanted == RunState.STOPPED:
                self.state = RunState.STOPPED
                self._cond.notify_all()
                return False
            self.state = RunState.RUNNING
            return True

    # -- the run loop ---------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            if not self._settle():
                return
            if self._on_first_run is not None:
                self._on_first_run()
            self._loop()
        except KvmError as exc:
            self._on_stop(Stop(VMM_FAILURE, f"vCPU {self.vcpu.id}: {exc}"))
        except Exception as exc:  # a VMM bug: report it, stop the VM, never hang
            import traceback

            traceback.print_exc(file=sys.stderr)
            self._on_stop(Stop(VMM_FAILURE, f"vCPU {self.vcpu.id}: internal error: {exc!r}"))
        finally:
            with self._cond:
                self.state = RunState.STOPPED
                self._cond.notify_all()

    def _loop(self) -> None:
        """The hot loop. Single port I/O (the commonest exit: serial, debug ports, legacy devices)
        takes the lean path: one struct read of the exit head (:func:`vnix.kvm.exits.exit_head`),
        a per-port counter, the bus call, no exit object, no lock. Every other exit is decoded
        into its exit object and dispatched with ``match`` in :meth:`_slow_exit`."""
        run = self.vcpu.fast_run()
        run_failed = self.vcpu.run_failed
        page = self.vcpu.run_page
        page_len = len(page)
        head = exit_head
        pio_read, pio_write = self.pio.read, self.pio.write
        io_out, io_in = self.counters.io_out, self.counters.io_in
        slow = self._slow_exit
        while True:
            if run() < 0:
                if run_failed() is None:  # EAGAIN: enter again
                    continue
                self.counters.by_reason["intr"] += 1
                if not self._settle():
                    return
                continue
            reason, is_out, size, port, count, offset = head(page, EXIT_HEAD_OFFSET)
            if reason == KVM_EXIT_IO and count == 1 and IO_DATA_MIN <= offset <= page_len - size:
                if is_out:
                    io_out[port] += 1
                    pio_write(port, page[offset : offset + size])
                else:
                    io_in[port] += 1
                    page[offset : offset + size] = pio_read(port, size)
            elif not slow(decode(page)):
                return

    def _slow_exit(self, exit: Exit) -> bool:
        """Everything but single port I/O. Returns False when the thread must end."""
        by_reason = self.counters.by_reason
        page = self.vcpu.run_page
        match exit:
            case IoOut(port=port, size=size, data=data, count=count):  # rep outs
                self.counters.io_out[port] += 1
                for i in range(0, size * count, size):
                    self.pio.write(port, data[i : i + size])
            case IoIn(port=port, size=size, count=count):  # rep ins
                self.counters.io_in[port] += 1
                complete_io_in(page, exit, b"".join(self.pio.read(port, size) for _ in range(count)))
            case MmioWrite(addr=addr, data=data):
                by_reason["mmio_write"] += 1
                self.counters.mmio[addr] += 1
                self.mmio.write(addr, data)
            case MmioRead(addr=addr, len=length):
                by_reason["mmio_read"] += 1
                self.counters.mmio[addr] += 1
                complete_mmio_read(page, exit, self.mmio.read(addr, length))
            case Intr():
                by_reason["intr"] += 1
                return self._settle()
            case Hlt():
                # Only without an in-kernel LAPIC: nothing can wake this vCPU again.
                by_reason["hlt"] += 1
                self._on_stop(Stop(POWEROFF, f"vCPU {self.vcpu.id} halted"))
            case Shutdown():
                by_reason["shutdown"] += 1
                self._on_stop(Stop(TRIPLE_FAULT, f"triple fault on vCPU {self.vcpu.id} (KVM_EXIT_SHUTDOWN)"))
            case SystemEvent(type=etype):
                by_reason["system_event"] += 1
                self._on_stop(_system_event_stop(etype, self.vcpu.id))
            case InternalError(suberror=sub, data=data):
                by_reason["internal_error"] += 1
                if sub == k.KVM_INTERNAL_ERROR_EMULATION and self._int3_fixup():
                    by_reason["int3_injected"] += 1
                    return True
                self._on_stop(self._internal_error_stop(sub, data))
            case FailEntry(reason=reason, cpu=cpu):
                by_reason["fail_entry"] += 1
                self._on_stop(Stop(VMM_FAILURE, f"KVM could not enter the guest: reason {reason:#x} (cpu {cpu})"))
            case Unknown(reason=reason):
                by_reason["unknown"] += 1
                self._on_stop(Stop(VMM_FAILURE, f"vCPU {self.vcpu.id}: unexpected KVM exit reason {reason}"))
        return True

    def _int3_fixup(self) -> bool:
        """Software-nested KVM (kvm_pvm) cannot emulate ``int3`` in guest kernel code (Linux's
        int3 self-test at boot hits it; notes/kvm-on-these-machines.md). If the failed
        instruction is the one-byte ``int3`` (0xCC), do what the CPU would: step over it and
        deliver #BP (a trap: the saved rip points past the int3). True if that was done."""
        if self._read_guest is None:
            return False
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
            gpa = self.vcpu.translate(sregs.cs.base + regs.rip if not sregs.efer & EFER_LMA else regs.rip)
            if gpa is None or self._read_guest(gpa, 1) != INT3:
                return False
            regs.rip += 1
            self.vcpu.set_regs(regs)
            self.vcpu.inject_exception(BP_VECTOR)
        except (KvmError, VmmError):
            return False
        return True

    def _internal_error_stop(self, suberror: int, data: tuple[int, ...]) -> Stop:
        try:
            rip = f"{self.vcpu.get_regs().rip:#x}"
        except KvmError:
            rip = "unknown"
        names = {
            k.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
            k.KVM_INTERNAL_ERROR_SIMUL_EX: "simultaneous exceptions",
            k.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
        }
        extra = " data " + " ".join(f"{d:#x}" for d in data) if data else ""
        return Stop(
            EMULATION_FAILURE,
            f"KVM internal error on vCPU {self.vcpu.id}: suberror {suberror} "
            f"({names.get(suberror, 'unknown')}) at rip {rip}{extra}",
        )


def _system_event_stop(etype: int, vcpu_id: int) -> Stop:
    if etype == k.KVM_SYSTEM_EVENT_SHUTDOWN:
        return Stop(POWEROFF, "guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN)", report=False)
    if etype == k.KVM_SYSTEM_EVENT_RESET:
        return Stop(REBOOT, "guest reset (KVM_SYSTEM_EVENT_RESET)")
    if etype == k.KVM_SYSTEM_EVENT_CRASH:
        return Stop(GUEST_PANIC, "guest crashed (KVM_SYSTEM_EVENT_CRASH)")
    return Stop(VMM_FAILURE, f"vCPU {vcpu_id}: unknown system event {etype}")


# -- snapshots -------------------------------------------------------------------------------------
class VcpuState(Record):
    """Everything KVM keeps for one vCPU, each piece as the raw bytes of its KVM struct
    (sizes checked on restore). ``msrs`` are (index, value) pairs: the MSRs KVM lists as
    saveable (KVM_GET_MSR_INDEX_LIST) that it also lets us read, the TSC among them."""

    __slots__ = ("id", "cpuid", "regs", "sregs", "fpu", "xsave", "xcrs", "lapic", "debugregs", "events",
                 "mp_state", "msrs")

    def __init__(self, id: int, cpuid: bytes, regs: bytes, sregs: bytes, fpu: bytes, xsave: bytes, xcrs: bytes,
                 lapic: bytes, debugregs: bytes, events: bytes, mp_state: int, msrs: list[list[int]]) -> None:
        self.id, self.cpuid, self.regs, self.sregs, self.fpu, self.xsave = id, cpuid, regs, sregs, fpu, xsave
        self.xcrs, self.lapic, self.debugregs, self.events = xcrs, lapic, debugregs, events
        self.mp_state, self.msrs = mp_state, msrs


def readable_msrs(vcpu: Vcpu, indices: list[int]) -> list[int]:
    """``indices`` minus the MSRs KVM refuses to read on this vCPU. KVM_GET_MSRS stops at the
    first refusal and says how many it read, so each refusal costs one more call."""
    keep: list[int] = []
    rest = list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        keep += [i for i in rest[: len(got)] if i in got]
        rest = rest[len(got) + 1 :]  # skip the refused one
    return keep


def save_vcpu_state(vcpu: Vcpu, msr_indices: list[int]) -> VcpuState:
    """The vCPU must be out of KVM_RUN (paused), its last I/O completed by KVM_RUN."""
    msrs = vcpu.get_msrs(msr_indices)
    cpuid = vcpu.get_cpuid2()
    return VcpuState(
        vcpu.id, b"".join(bytes(e) for e in cpuid), bytes(vcpu.get_regs()), bytes(vcpu.get_sregs()),
        bytes(vcpu.get_fpu()), bytes(vcpu.get_xsave()), bytes(vcpu.get_xcrs()), bytes(vcpu.get_lapic()),
        bytes(vcpu.get_debugregs()), bytes(vcpu.get_vcpu_events()), vcpu.get_mp_state(),
        [[i, msrs[i]] for i in msr_indices if i in msrs],
    )


def _struct(cls: type, raw: bytes, what: str):  # type: ignore[no-untyped-def]
    import ctypes

    if len(raw) != ctypes.sizeof(cls):
        raise VmmError(f"vCPU state {what} is {len(raw)} bytes, KVM's struct is {ctypes.sizeof(cls)}")
    return cls.from_buffer_copy(raw)


def restore_vcpu_registers(vcpu: Vcpu, state: VcpuState) -> None:
    """The part of :func:`restore_vcpu_state` that does not depend on when the vCPU will run:
    CPUID, special registers (APIC base, EFER), general, FPU, XSAVE, XCRs, debug registers.
    A clone server's idle child does it ahead (CPUID alone is ~0.16 ms); the LAPIC (its timer
    counts from the KVM_SET_LAPIC), the MSRs (the TSC runs from its KVM_SET_MSRS), events and MP
    state wait for the request (:func:`restore_vcpu_timed_state`)."""
    import ctypes

    from vnix.kvm import structs as ks

    esize = ctypes.sizeof(ks.kvm_cpuid_entry2)
    if len(state.cpuid) % esize or len(state.cpuid) // esize > k.KVM_MAX_CPUID_ENTRIES:
        raise VmmError(f"vCPU {state.id}: CPUID state of {len(state.cpuid)} bytes is not a list of entries")
    vcpu.set_cpuid2([ks.kvm_cpuid_entry2.from_buffer_copy(state.cpuid, i) for i in range(0, len(state.cpuid), esize)])
    vcpu.set_sregs(_struct(ks.kvm_sregs, state.sregs, "sregs"))
    vcpu.set_regs(_struct(ks.kvm_regs, state.regs, "regs"))
    vcpu.set_fpu(_struct(ks.kvm_fpu, state.fpu, "fpu"))
    vcpu.set_xsave(_struct(ks.kvm_xsave, state.xsave, "xsave"))
    vcpu.set_xcrs(_struct(ks.kvm_xcrs, state.xcrs, "xcrs"))
    vcpu.set_debugregs(_struct(ks.kvm_debugregs, state.debugregs, "debugregs"))


def restore_vcpu_timed_state(vcpu: Vcpu, state: VcpuState) -> None:
    """The rest of :func:`restore_vcpu_state`, after :func:`restore_vcpu_registers`: the LAPIC
    before the MSRs (a TSC-deadline value is only taken in TSC-deadline mode), the TSC before
    the TSC deadline (list order); events and MP state last."""
    from vnix.kvm import structs as ks

    vcpu.set_lapic(_struct(ks.kvm_lapic_state, state.lapic, "lapic"))
    if state.msrs:
        vcpu.set_msrs((int(i), int(v)) for i, v in state.msrs)
    vcpu.set_mp_state(state.mp_state)
    vcpu.set_vcpu_events(_struct(ks.kvm_vcpu_events, state.events, "vcpu_events"))


def restore_vcpu_state(vcpu: Vcpu, state: VcpuState) -> None:
    """Load ``state`` into a freshly created vCPU, in the order KVM needs: CPUID first; special
    registers (APIC base, EFER) before the LAPIC; the LAPIC before the MSRs, the TSC before the
    TSC deadline; events and MP state last."""
    restore_vcpu_registers(vcpu, state)
    restore_vcpu_timed_state(vcpu, state)
