"""The vCPU handle: KVM_RUN on the mmap'd ``kvm_run`` page, and every piece of vCPU state.

The get/set pairs cover what a snapshot needs (regs, sregs, FPU, MSRs, LAPIC, MP state, events,
XSAVE, XCRs, debug registers); the structs are returned as ctypes copies the caller may edit.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
from functools import partial
from collections.abc import Callable, Iterable, Sequence

from vnix.kvm import KvmError
from vnix.kvm import ioctls as k
from vnix.kvm import structs as s
from vnix.kvm._ioctl import _ioctl, _ioctl_int, ioctl, ioctl_obj
from vnix.kvm.exits import INTR, Exit, Intr, decode

_RUN = k.KVM_RUN
_IMMEDIATE_EXIT = s.RUN_IMMEDIATE_EXIT
_EINTR = errno.EINTR
_EAGAIN = errno.EAGAIN


class Vcpu:
    """A KVM vCPU fd and its shared run page."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        try:
            self.run_page = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise KvmError("mmap kvm_run", exc.errno or 0) from None

    def close(self) -> None:
        if self.fd >= 0:
            self.run_page.close()
            os.close(self.fd)
            self.fd = -1

    # -- running --------------------------------------------------------------------------------
    def run(self) -> Exit:
        """Enter the guest until the next exit; a signal or ``immediate_exit`` gives ``Intr``.

        An application processor waits inside KVM_RUN in KVM_MP_STATE_UNINITIALIZED until the
        guest sends it INIT; KVM then returns ``EAGAIN`` ("state changed, call me again": x86.c,
        ``kvm_arch_vcpu_ioctl_run``), and QEMU's ``kvm_cpu_exec`` simply re-enters. So do we.
        """
        fd = self.fd
        while _ioctl(fd, _RUN, 0) < 0:
            err = ctypes.get_errno()
            if err == _EINTR:
                return INTR
            if err != _EAGAIN:
                raise KvmError("KVM_RUN", err)
        return decode(self.run_page)

    def fast_run(self) -> Callable[[], int]:
        """KVM_RUN as a bare zero-argument call for the hot loop: returns 0 when there is an exit
        to read from the run page (see :func:`vnix.kvm.exits.exit_head`), a negative number when
        the call failed; then :meth:`run_failed` says what to do. Saves the method frame and
        argument conversion of :meth:`run` (~0.5 us an exit, a third of the Python part)."""
        return partial(_ioctl_int, self.fd, _RUN, 0)

    def run_failed(self) -> Intr | None:
        """After ``fast_run()`` returned < 0: ``INTR`` for a kick (EINTR), None to simply enter
        again (EAGAIN, as in :meth:`run`); any other errno raises :class:`KvmError`."""
        err = ctypes.get_errno()
        if err == _EINTR:
            return INTR
        if err == _EAGAIN:
            return None
        raise KvmError("KVM_RUN", err)

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_page[_IMMEDIATE_EXIT])

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_page[_IMMEDIATE_EXIT] = 1 if value else 0

    def nmi(self) -> None:
        ioctl(self.fd, k.KVM_NMI, op="KVM_NMI")

    # -- fixed-size state -----------------------------------------------------------------------
    def _get(self, request: int, cls: type, op: str):  # type: ignore[no-untyped-def]
        obj = cls()
        ioctl_obj(self.fd, request, obj, op=op)
        return obj

    def get_regs(self) -> s.kvm_regs:
        return self._get(k.KVM_GET_REGS, s.kvm_regs, "KVM_GET_REGS")

    def set_regs(self, regs: s.kvm_regs) -> None:
        ioctl_obj(self.fd, k.KVM_SET_REGS, regs, op="KVM_SET_REGS")

    def get_sregs(self) -> s.kvm_sregs:
        return self._get(k.KVM_GET_SREGS, s.kvm_sregs, "KVM_GET_SREGS")

    def set_sregs(self, sregs: s.kvm_sregs) -> None:
        ioctl_obj(self.fd, k.KVM_SET_SREGS, sregs, op="KVM_SET_SREGS")

    def get_fpu(self) -> s.kvm_fpu:
        return self._get(k.KVM_GET_FPU, s.kvm_fpu, "KVM_GET_FPU")

    def set_fpu(self, fpu: s.kvm_fpu) -> None:
        ioctl_obj(self.fd, k.KVM_SET_FPU, fpu, op="KVM_SET_FPU")

    def get_lapic(self) -> s.kvm_lapic_state:
        return self._get(k.KVM_GET_LAPIC, s.kvm_lapic_state, "KVM_GET_LAPIC")

    def set_lapic(self, lapic: s.kvm_lapic_state) -> None:
        ioctl_obj(self.fd, k.KVM_SET_LAPIC, lapic, op="KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        return self._get(k.KVM_GET_MP_STATE, s.kvm_mp_state, "KVM_GET_MP_STATE").mp_state

    def set_mp_state(self, state: int) -> None:
        ioctl_obj(self.fd, k.KVM_SET_MP_STATE, s.kvm_mp_state(state), op="KVM_SET_MP_STATE")

    def translate(self, linear: int) -> int | None:
        """The guest-physical address of ``linear`` under the vCPU's paging, or None if unmapped."""
        t = s.kvm_translation(linear_address=linear)
        ioctl_obj(self.fd, k.KVM_TRANSLATE, t, op="KVM_TRANSLATE")
        return t.physical_address if t.valid else None

    def inject_exception(self, vector: int) -> None:
        """Make ``vector`` (an exception without error code, e.g. 3 = #BP) the vCPU's injected
        event at the next KVM_RUN (KVM_SET_VCPU_EVENTS; the other events are kept)."""
        events = self.get_vcpu_events()
        events.exception.injected = 1
        events.exception.pending = 0
        events.exception.nr = vector
        events.exception.has_error_code = 0
        events.exception.error_code = 0
        events.flags = 0  # leave NMI pending, SIPI vector, shadow and SMM state as they are
        self.set_vcpu_events(events)

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        return self._get(k.KVM_GET_VCPU_EVENTS, s.kvm_vcpu_events, "KVM_GET_VCPU_EVENTS")

    def set_vcpu_events(self, events: s.kvm_vcpu_events) -> None:
        ioctl_obj(self.fd, k.KVM_SET_VCPU_EVENTS, events, op="KVM_SET_VCPU_EVENTS")

    def get_xsave(self) -> s.kvm_xsave:
        return self._get(k.KVM_GET_XSAVE, s.kvm_xsave, "KVM_GET_XSAVE")

    def set_xsave(self, xsave: s.kvm_xsave) -> None:
        ioctl_obj(self.fd, k.KVM_SET_XSAVE, xsave, op="KVM_SET_XSAVE")

    def get_xcrs(self) -> s.kvm_xcrs:
        return self._get(k.KVM_GET_XCRS, s.kvm_xcrs, "KVM_GET_XCRS")

    def set_xcrs(self, xcrs: s.kvm_xcrs) -> None:
        ioctl_obj(self.fd, k.KVM_SET_XCRS, xcrs, op="KVM_SET_XCRS")

    def get_debugregs(self) -> s.kvm_debugregs:
        return self._get(k.KVM_GET_DEBUGREGS, s.kvm_debugregs, "KVM_GET_DEBUGREGS")

    def set_debugregs(self, dregs: s.kvm_debugregs) -> None:
        ioctl_obj(self.fd, k.KVM_SET_DEBUGREGS, dregs, op="KVM_SET_DEBUGREGS")

    # -- variable-size state --------------------------------------------------------------------
    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """Read MSRs; an MSR KVM does not know is left out of the answer."""
        buf = s.msrs_with(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        got = ioctl_obj(self.fd, k.KVM_GET_MSRS, buf, op="KVM_GET_MSRS")
        return {buf.entries[i].index: buf.entries[i].data for i in range(got)}

    def set_msrs(self, entries: Iterable[tuple[int, int]]) -> None:
        """Write (index, value) pairs; all must be accepted."""
        pairs = list(entries)
        buf = s.msrs_with(len(pairs))()
        buf.nmsrs = len(pairs)
        for i, (index, value) in enumerate(pairs):
            buf.entries[i].index = index
            buf.entries[i].data = value
        done = ioctl_obj(self.fd, k.KVM_SET_MSRS, buf, op="KVM_SET_MSRS")
        if done != len(pairs):
            raise KvmError("KVM_SET_MSRS", 0, f"MSR {pairs[done][0]:#x} was refused")

    def set_cpuid2(self, entries: Sequence[s.kvm_cpuid_entry2]) -> None:
        buf = s.cpuid2_with(len(entries))()
        buf.nent = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        ioctl_obj(self.fd, k.KVM_SET_CPUID2, buf, op="KVM_SET_CPUID2")

    def get_cpuid2(self, max_entries: int = k.KVM_MAX_CPUID_ENTRIES) -> list[s.kvm_cpuid_entry2]:
        buf = s.cpuid2_with(max_entries)()
        buf.nent = max_entries
        ioctl_obj(self.fd, k.KVM_GET_CPUID2, buf, op="KVM_GET_CPUID2")
        return [s.kvm_cpuid_entry2.from_buffer_copy(e) for e in buf.entries[: buf.nent]]
