"""Checking cache requests before they are proposed: a bad one costs no log entry, and
its error names the field (as the JSON gateway spells it) and the limit it broke.

The state machine re-checks the limits it relies on; these checks add what only the
request can tell: JSON-ness of the value and the ttl's range as seconds.
"""

from __future__ import annotations

import math

from google.protobuf import struct_pb2

from server.api.errors import invalid
from server.fsm.json_values import json_value_problem
from server.fsm.cache import MAX_TTL_MS, MAX_VALUE_BYTES, key_problem

MAX_TTL_SECONDS = MAX_TTL_MS // 1000


def check_key(key: str) -> None:
    problem = key_problem(key)
    if problem is not None:
        raise invalid("key", problem)


def encode_value(value: struct_pb2.Value, present: bool) -> bytes:
    """The value as the cache stores it (deterministic bytes); `present`: the request set it."""
    if not present:
        raise invalid("value", "required: any JSON value, null included")
    problem = json_value_problem(value)
    if problem is not None:
        raise invalid(f"value{problem[0]}", problem[1])
    data = value.SerializeToString(deterministic=True)
    if len(data) > MAX_VALUE_BYTES:
        raise invalid(
            "value", f"{len(data)} bytes serialized; at most {MAX_VALUE_BYTES} (1 MiB): store less, or split it over keys"
        )
    return data


def ttl_ms(ttl: float) -> int:
    """Seconds (0: never expires) as whole milliseconds, rounded up so an entry never expires early."""
    if math.isnan(ttl) or ttl < 0 or ttl > MAX_TTL_SECONDS:
        raise invalid("ttl", f"{ttl} seconds; give 0 (never expires) up to {MAX_TTL_SECONDS} (30 days)")
    return math.ceil(ttl * 1000)
