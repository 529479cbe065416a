"""``kvm_run`` decoded once into small immutable values, one class per exit kind.

After ``KVM_RUN`` returns, :func:`decode` reads the shared run page (``struct kvm_run``,
Documentation/virt/kvm/api.rst section 5 "The kvm_run structure") and returns one of the
classes below; the vCPU loop dispatches on them with ``match`` and never reads raw offsets.
Exits that want an answer (:class:`IoIn`, :class:`MmioRead`) are completed with
:func:`complete_io_in` / :func:`complete_mmio_read`, which write the data back into the run page
where KVM picks it up on the next ``KVM_RUN``.

The page is written by the kernel, but the decoder still checks that an I/O data area lies inside
the page, so a corrupt page is reported as :class:`Unknown`, never as an out-of-bounds access.
"""
from __future__ import annotations

import struct

from vnix.kvm import ioctls as k
from vnix.kvm.structs import RUN_EXIT_REASON, RUN_EXIT_UNION

_REASON = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
_TWO_U32 = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_FAIL = struct.Struct("<QI")
_MMIO_DATA = RUN_EXIT_UNION + 8
_MAX_DATA = 16


_set = object.__setattr__


class _Exit:
    """Base of the exit values: immutable, slotted, compared by type and fields.

    Plain classes rather than ``@dataclass(frozen=True)``: building eleven dataclasses costs the
    VMM process ~5 ms of start-up (it compiles their methods), which its 60 ms budget cannot spare.
    """

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._fields() == self._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({args})"


class IoOut(_Exit):
    """``out``/``outs``: ``data`` holds ``count`` items of ``size`` bytes, little-endian."""

    __slots__ = __match_args__ = ("port", "size", "data", "count")
    port: int
    size: int
    data: bytes
    count: int

    def __init__(self, port: int, size: int, data: bytes, count: int = 1) -> None:
        _set(self, "port", port)
        _set(self, "size", size)
        _set(self, "data", data)
        _set(self, "count", count)


class IoIn(_Exit):
    """``in``/``ins``: the VMM must supply ``size * count`` bytes (see :func:`complete_io_in`)."""

    __slots__ = __match_args__ = ("port", "size", "count", "data_offset")
    port: int
    size: int
    count: int
    data_offset: int

    def __init__(self, port: int, size: int, count: int = 1, data_offset: int = 0) -> None:
        _set(self, "port", port)
        _set(self, "size", size)
        _set(self, "count", count)
        _set(self, "data_offset", data_offset)


class MmioRead(_Exit):
    __slots__ = __match_args__ = ("addr", "len")
    addr: int
    len: int

    def __init__(self, addr: int, len: int) -> None:  # noqa: A002 - the kernel's name
        _set(self, "addr", addr)
        _set(self, "len", len)


class MmioWrite(_Exit):
    __slots__ = __match_args__ = ("addr", "data")
    addr: int
    data: bytes

    def __init__(self, addr: int, data: bytes) -> None:
        _set(self, "addr", addr)
        _set(self, "data", data)


class Hlt(_Exit):
    """The guest halted with the in-kernel LAPIC absent (or KVM chose to exit on HLT)."""

    __slots__ = ()


class Shutdown(_Exit):
    """KVM_EXIT_SHUTDOWN: a triple fault (or another shutdown condition) in the guest."""

    __slots__ = ()


class Intr(_Exit):
    """KVM_RUN was interrupted by a signal (a kick) or ``immediate_exit``."""

    __slots__ = ()


class SystemEvent(_Exit):
    """KVM_EXIT_SYSTEM_EVENT: ``type`` is KVM_SYSTEM_EVENT_SHUTDOWN / RESET / CRASH."""

    __slots__ = __match_args__ = ("type", "data")
    type: int
    data: tuple[int, ...]

    def __init__(self, type: int, data: tuple[int, ...] = ()) -> None:  # noqa: A002
        _set(self, "type", type)
        _set(self, "data", data)


class InternalError(_Exit):
    """KVM_EXIT_INTERNAL_ERROR: ``suberror`` 1 is "emulation failure"."""

    __slots__ = __match_args__ = ("suberror", "data")
    suberror: int
    data: tuple[int, ...]

    def __init__(self, suberror: int, data: tuple[int, ...] = ()) -> None:
        _set(self, "suberror", suberror)
        _set(self, "data", data)


class FailEntry(_Exit):
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest."""

    __slots__ = __match_args__ = ("reason", "cpu")
    reason: int
    cpu: int

    def __init__(self, reason: int, cpu: int = 0) -> None:
        _set(self, "reason", reason)
        _set(self, "cpu", cpu)


class Unknown(_Exit):
    """An exit the VMM does not handle; ``reason`` is kvm_run.exit_reason."""

    __slots__ = __match_args__ = ("reason",)
    reason: int

    def __init__(self, reason: int) -> None:
        _set(self, "reason", reason)


TYPE_CHECKING = False  # typing is not imported at VMM start-up (mypy reads this name as True)
if TYPE_CHECKING:
    from typing import Union

    Exit = Union[
        IoOut, IoIn, MmioRead, MmioWrite, Hlt, Shutdown, SystemEvent, InternalError, FailEntry, Intr, Unknown
    ]
else:
    Exit = _Exit  # at run time: the common base of the exits above (a name for annotations)

HLT = Hlt()
SHUTDOWN = Shutdown()
INTR = Intr()

# Counter names: the key each exit is counted under in the VMM's statistics.
EXIT_NAMES: dict[type, str] = {
    IoOut: "io_out",
    IoIn: "io_in",
    MmioRead: "mmio_read",
    MmioWrite: "mmio_write",
    Hlt: "hlt",
    Shutdown: "shutdown",
    SystemEvent: "system_event",
    InternalError: "internal_error",
    FailEntry: "fail_entry",
    Intr: "intr",
    Unknown: "unknown",
}


# -- the hot path ---------------------------------------------------------------------------------
# One struct call reads kvm_run.exit_reason and the io member of the exit union together, so the
# vCPU loop handles the commonest exit (single port I/O) without building an exit object:
#   exit_head(page, EXIT_HEAD_OFFSET) -> (reason, direction, size, port, count, data_offset)
# The io fields mean something only when reason == KVM_EXIT_IO; the caller checks that the data
# area [data_offset, data_offset + size * count) lies in [IO_DATA_MIN, len(page)), as decode() does.
_HEAD = struct.Struct(f"<I{RUN_EXIT_UNION - RUN_EXIT_REASON - 4}xBBHIQ")
exit_head = _HEAD.unpack_from
EXIT_HEAD_OFFSET = RUN_EXIT_REASON
IO_DATA_MIN = RUN_EXIT_UNION  # the kernel puts port data after the union header, inside the page


def decode(page: bytes | bytearray | memoryview) -> Exit:
    """Turn the run page after KVM_RUN into one exit value."""
    (reason,) = _REASON.unpack_from(page, RUN_EXIT_REASON)
    if reason == k.KVM_EXIT_IO:
        direction, size, port, count, offset = _IO.unpack_from(page, RUN_EXIT_UNION)
        length = size * count
        if size not in (1, 2, 4) or offset < RUN_EXIT_UNION or offset + length > len(page):
            return Unknown(reason)
        if direction == k.KVM_EXIT_IO_OUT:
            return IoOut(port, size, bytes(page[offset : offset + length]), count)
        return IoIn(port, size, count, offset)
    if reason == k.KVM_EXIT_MMIO:
        addr, data, length, is_write = _MMIO.unpack_from(page, RUN_EXIT_UNION)
        if not 1 <= length <= 8:
            return Unknown(reason)
        if is_write:
            return MmioWrite(addr, data[:length])
        return MmioRead(addr, length)
    if reason == k.KVM_EXIT_HLT:
        return HLT
    if reason == k.KVM_EXIT_INTR:
        return INTR
    if reason == k.KVM_EXIT_SHUTDOWN:
        return SHUTDOWN
    if reason == k.KVM_EXIT_SYSTEM_EVENT:
        etype, ndata = _TWO_U32.unpack_from(page, RUN_EXIT_UNION)
        return SystemEvent(etype, _u64s(page, RUN_EXIT_UNION + 8, ndata))
    if reason == k.KVM_EXIT_INTERNAL_ERROR:
        suberror, ndata = _TWO_U32.unpack_from(page, RUN_EXIT_UNION)
        return InternalError(suberror, _u64s(page, RUN_EXIT_UNION + 8, ndata))
    if reason == k.KVM_EXIT_FAIL_ENTRY:
        hw_reason, cpu = _FAIL.unpack_from(page, RUN_EXIT_UNION)
        return FailEntry(hw_reason, cpu)
    return Unknown(reason)


def _u64s(page: bytes | bytearray | memoryview, offset: int, n: int) -> tuple[int, ...]:
    n = min(n, _MAX_DATA)
    return struct.unpack_from(f"<{n}Q", page, offset) if n else ()


def complete_io_in(page: bytearray | memoryview, exit: IoIn, data: bytes) -> None:
    """Give the guest the bytes of an ``in``: exactly ``size * count`` of them."""
    want = exit.size * exit.count
    if len(data) != want:
        raise ValueError(f"IoIn port {exit.port:#x} needs {want} bytes, got {len(data)}")
    page[exit.data_offset : exit.data_offset + want] = data


def complete_mmio_read(page: bytearray | memoryview, exit: MmioRead, data: bytes) -> None:
    """Give the guest the bytes of an MMIO read: exactly ``len`` of them."""
    if len(data) != exit.len:
        raise ValueError(f"MmioRead {exit.addr:#x} needs {exit.len} bytes, got {len(data)}")
    page[_MMIO_DATA : _MMIO_DATA + exit.len] = data
