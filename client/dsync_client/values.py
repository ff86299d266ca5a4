"""JSON values <-> google.protobuf.Value, the body type of queue messages and cache entries.

Protobuf has one number type (double), so a whole number comes back as an int, as a JSON
parser would give it, rather than as 1.0.
"""

from __future__ import annotations

from typing import TypeAlias

from google.protobuf import struct_pb2

JSON: TypeAlias = "None | bool | int | float | str | list[JSON] | dict[str, JSON]"
# A queue message's body: a JSON value, or raw bytes.
Body: TypeAlias = "JSON | bytes"

_EXACT_INT = 2**53  # beyond it a double no longer holds every integer


def to_value(obj: object) -> struct_pb2.Value:
    """`obj` as a Value; TypeError names the first part that is not JSON."""
    value = struct_pb2.Value()
    if obj is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, (int, float)):
        value.number_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, (list, tuple)):
        value.list_value.values.extend(to_value(item) for item in obj)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, got {key!r}")
            value.struct_value.fields[key].CopyFrom(to_value(item))
    else:
        raise TypeError(
            f"{type(obj).__name__} is not JSON: pass dict, list, str, int, float, bool or None "
            "(or bytes, where a raw body is allowed)"
        )
    return value


def from_value(value: struct_pb2.Value) -> JSON:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) <= _EXACT_INT else number
    if kind == "string_value":
        return value.string_value
    if kind == "list_value":
        return [from_value(item) for item in value.list_value.values]
    if kind == "struct_value":
        return {key: from_value(item) for key, item in value.struct_value.fields.items()}
    return None  # null_value, or a Value with nothing set
