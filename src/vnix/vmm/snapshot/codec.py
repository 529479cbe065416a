"""The state tree of a snapshot as JSON, and back.

Every component's ``save()`` returns a dataclass or a :class:`~vnix.vmm.record.Record` (nested
in lists and dicts with string keys, with ints, bools, strings, None, bytes). Encoded, a state
object is ``{"@": "Name", ...fields}`` and bytes are ``{"@b": "<base64>"}``. Decoding builds
only the classes registered here by name (:func:`register_lazy`: the module is imported the
first time a snapshot names the class, so a restore imports only the devices it has): a
snapshot file can never make the reader import or call anything else. Unknown names, missing
or extra fields are a :class:`SnapshotError`.
"""
from __future__ import annotations

import base64
import importlib
import json

TYPE_CHECKING = False  # typing is not imported at run time (the VMM start path; mypy reads True)
if TYPE_CHECKING:
    from typing import Any

from vnix.vmm.record import Record
from vnix.vmm.snapshot.errors import SnapshotError

STATE_TYPES: dict[str, type] = {}
_LAZY: dict[str, str] = {}  # class name -> module that defines it
MAX_DEPTH = 32


def register(*classes: type) -> None:
    for cls in classes:
        if _field_names(cls) is None:
            raise TypeError(f"{cls!r} is neither a dataclass nor a Record")
        STATE_TYPES[cls.__name__] = cls


def register_lazy(module: str, *names: str) -> None:
    for name in names:
        _LAZY[name] = module


def _lookup(name: str) -> type | None:
    cls = STATE_TYPES.get(name)
    if cls is None and name in _LAZY:
        cls = getattr(importlib.import_module(_LAZY[name]), name, None)
        if cls is not None:
            register(cls)
    return cls


def _field_names(cls: type) -> tuple[str, ...] | None:
    if isinstance(cls, type) and issubclass(cls, Record):
        return tuple(cls.__slots__)
    fields = getattr(cls, "__dataclass_fields__", None)
    return tuple(fields) if fields is not None else None


def _encode(value: Any) -> Any:
    names = _field_names(type(value))
    if names is not None:
        name = type(value).__name__
        if _lookup(name) is not type(value):
            raise SnapshotError(f"state class {name} is not registered for snapshots")
        out = {"@": name}
        for field in names:
            out[field] = _encode(getattr(value, field))
        return out
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"@b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise SnapshotError("state dict keys must be strings")
        return {k: _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SnapshotError(f"cannot save a {type(value).__name__} in a snapshot")


def _decode(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise SnapshotError("snapshot state is nested too deeply")
    if isinstance(value, list):
        return [_decode(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if "@b" in value:
            try:
                return base64.b64decode(value["@b"], validate=True)
            except (ValueError, TypeError):
                raise SnapshotError("snapshot state holds bad base64") from None
        if "@" in value:
            name = value["@"]
            cls = _lookup(name) if isinstance(name, str) else None
            if cls is None:
                raise SnapshotError(f"snapshot state names an unknown type {name!r}")
            names = set(_field_names(cls) or ())
            args = {k: _decode(v, depth + 1) for k, v in value.items() if k != "@"}
            if not set(args) <= names:
                raise SnapshotError(f"snapshot state {name} has unknown fields {sorted(set(args) - names)}")
            try:
                return cls(**args)
            except TypeError as exc:
                raise SnapshotError(f"snapshot state {name}: {exc}") from None
        return {k: _decode(v, depth + 1) for k, v in value.items()}
    return value


def dumps(state: Any) -> bytes:
    return json.dumps(_encode(state), separators=(",", ":")).encode()


def loads(raw: bytes) -> Any:
    try:
        tree = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"snapshot state is not valid JSON: {exc}") from None
    return _decode(tree)
