"""The state tree of a snapshot as JSON, and back.

Every component's ``save()`` returns a dataclass (nested dataclasses, lists, dicts with string
keys, ints, bools, strings, None, bytes). Encoded, a dataclass is ``{"@": "Name", ...fields}``
and bytes are ``{"@b": "<base64>"}``. Decoding builds only the dataclasses registered here by
name (:data:`STATE_TYPES`): a snapshot file can never make the reader import or call anything
else. Unknown names, missing or extra fields are a :class:`SnapshotError`.
"""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from vnix.vmm.snapshot.errors import SnapshotError

STATE_TYPES: dict[str, type] = {}
MAX_DEPTH = 32


def register(*classes: type) -> None:
    for cls in classes:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        STATE_TYPES[cls.__name__] = cls


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if STATE_TYPES.get(name) is not type(value):
            raise SnapshotError(f"state class {name} is not registered for snapshots")
        out = {"@": name}
        for f in dataclasses.fields(value):
            out[f.name] = _encode(getattr(value, f.name))
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
            cls = STATE_TYPES.get(name) if isinstance(name, str) else None
            if cls is None:
                raise SnapshotError(f"snapshot state names an unknown type {name!r}")
            names = {f.name for f in dataclasses.fields(cls)}
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
