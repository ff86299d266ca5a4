"""Which `google.protobuf.Value`s the services store: only what JSON can carry, nested no
deeper than protobuf can decode again.

A gRPC client can build Values that JSON cannot hold -- NaN or an infinity, a Value with
nothing set -- and stored, they would fail every later read through the HTTP gateway.
Each JSON object costs three levels of protobuf nesting (Value, Struct, map entry) and
protobuf decodes at most 100, so a value nested deeper than MAX_JSON_DEPTH would be
accepted here and fail when a replica decodes it.
"""

from __future__ import annotations

import math

from google.protobuf import struct_pb2

# Objects and lists inside one another, the outermost counted.
MAX_JSON_DEPTH = 32


def json_value_problem(value: struct_pb2.Value) -> tuple[str, str] | None:
    """(path below `value`, problem) for the first part that may not be stored, or None."""
    pending: list[tuple[struct_pb2.Value, str, int]] = [(value, "", 0)]
    while pending:
        item, path, depth = pending.pop()
        kind = item.WhichOneof("kind")
        if kind is None:
            return path, "holds no value: set one of null, number, string, bool, struct or list"
        if kind == "number_value" and not math.isfinite(item.number_value):
            return path, f"{item.number_value} is not a JSON number"
        if kind in ("struct_value", "list_value"):
            if depth == MAX_JSON_DEPTH:
                return path, f"objects and lists nest more than {MAX_JSON_DEPTH} levels deep; flatten the value"
            if kind == "struct_value":
                children = [(v, f"{path}[{k!r}]") for k, v in item.struct_value.fields.items()]
            else:
                children = [(v, f"{path}[{i}]") for i, v in enumerate(item.list_value.values)]
            pending.extend((child, child_path, depth + 1) for child, child_path in reversed(children))
    return None
