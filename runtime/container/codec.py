"""Frozen dataclasses <-> JSON-able dicts, driven by their type hints (records in SQLite)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


_SCALARS = (str, int, float, bool, type(None))
# Field names of each dataclass type met: dataclasses.fields() and is_dataclass() cost
# more than the conversion itself (a record is saved at each state change).
_FIELDS: dict[type, tuple[str, ...]] = {}


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, _SCALARS):
        return obj.value if isinstance(obj, enum.Enum) else obj
    cls = type(obj)
    names = _FIELDS.get(cls)
    if names is None and dataclasses.is_dataclass(cls):
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    if names is not None:
        return {name: to_jsonable(getattr(obj, name)) for name in names}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode()
    return obj


def from_jsonable(cls: type[T], data: Any) -> T:
    return typing.cast(T, _convert(cls, data))


def _convert(tp: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], data) if len(inner) == 1 else data
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        kwargs = {f.name: _convert(hints[f.name], data[f.name])
                  for f in dataclasses.fields(tp) if f.name in data}
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in data)
        return tuple(_convert(a, v) for a, v in zip(args, data, strict=False))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        val = args[1] if len(args) == 2 else Any
        return types.MappingProxyType({k: _convert(val, v) for k, v in data.items()})
    if tp is float and isinstance(data, int):
        return float(data)
    return data
