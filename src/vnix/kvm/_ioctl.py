"""``ioctl(2)`` through libc with ``unsigned long`` arguments.

``fcntl.ioctl`` passes an integer argument as a signed C int (KVM_SET_TSS_ADDR with 0xfffbd000
overflows) and refuses immutable buffers over 1 KiB, so vnix calls libc's ``ioctl`` through
ctypes instead (see notes/kvm-on-these-machines.md). ctypes releases the GIL for the call, so a
vCPU thread blocked in KVM_RUN does not stop the others.
"""
from __future__ import annotations

import ctypes
import errno as _errno

from vnix.kvm import KvmError

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_ioctl.restype = ctypes.c_int

# The same libc function without argtypes, for calls whose arguments all fit a C int (KVM_RUN:
# request 0xae80, argument 0). ctypes' argtypes conversion costs ~0.35 us a call, a quarter of
# what a port-I/O exit spends in Python; a separate function object keeps ``_ioctl``'s argtypes.
_ioctl_int = ctypes.CDLL(None, use_errno=True).ioctl
_ioctl_int.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg: int = 0, *, op: str) -> int:
    """Issue ``ioctl(fd, request, arg)``; raise :class:`KvmError` naming ``op`` on failure."""
    while True:
        ret = _ioctl(fd, request, arg)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != _errno.EINTR:
            raise KvmError(op, err)


def ioctl_obj(fd: int, request: int, obj: ctypes._CData, *, op: str) -> int:  # type: ignore[name-defined]
    """Issue an ioctl whose argument is a pointer to ``obj`` (read, written or both)."""
    return ioctl(fd, request, ctypes.addressof(obj), op=op)


def ioctl_raw(fd: int, request: int, arg: int = 0) -> int:
    """The bare call for the hot path: returns ``-errno`` instead of raising."""
    ret = _ioctl(fd, request, arg)
    return ret if ret >= 0 else -ctypes.get_errno()
