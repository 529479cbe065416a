"""Small value classes for the VMM's start path, without ``dataclasses``.

The VMM process starts in tens of milliseconds, and ``import dataclasses`` alone costs it ~7 ms
(it pulls in ``inspect``, ``ast``, ``dis`` and ``tokenize``), plus ~0.5-1 ms for each
``@dataclass`` (it generates and ``exec``s its methods). The classes the boot path builds
(configuration, CPU state, ELF and PVH structures, e820 entries, bus ranges, stop reasons) derive
from these two bases instead and write a typed ``__init__`` by hand:

* :class:`Record`: mutable; ``==`` by fields, unhashable, a dataclass-like repr, :meth:`to_dict`
  (``dataclasses.asdict``) and :meth:`replace` (``dataclasses.replace``);
* :class:`FrozenRecord`: immutable (assign in ``__init__`` with ``_set``), hashable.

A subclass lists its fields in ``__slots__``, in constructor order: repr, ``==``, ``to_dict``
and ``replace`` follow that tuple. (``kvm.exits`` has its own copy of the frozen base, since
``vnix.kvm`` depends on nothing in ``vnix.vmm``.)
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (mypy reads this name as True)
if TYPE_CHECKING:
    from typing import Self

_set = object.__setattr__


class Record:
    """Fields in ``__slots__``; ``==``, repr and :meth:`to_dict` by those fields."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable: like a dataclass with eq and no frozen

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({args})"

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes`` applied (``dataclasses.replace``: fields not changed are shared)."""
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        new = object.__new__(type(self))
        for n in self.__slots__:
            _set(new, n, changes[n] if n in changes else getattr(self, n))
        return new

    def to_dict(self) -> dict[str, object]:
        """Fields by name; nested records (also in lists and tuples) as dicts: ``asdict``'s shape."""
        return {n: _plain(getattr(self, n)) for n in self.__slots__}


def _plain(value: object) -> object:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


class FrozenRecord(Record):
    """An immutable :class:`Record`: ``__init__`` assigns with ``_set``; hashable by fields."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot delete {name})")

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self._fields()))


def _rebuild(cls: type[FrozenRecord], values: tuple[object, ...]) -> FrozenRecord:
    new = object.__new__(cls)
    for n, v in zip(cls.__slots__, values):
        _set(new, n, v)
    return new
