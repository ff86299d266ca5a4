"""Checking lock requests and turning them into state-machine commands.

A bad request costs no log entry, and its error names the field as the JSON gateway
spells it and says what is allowed.  Seconds become whole milliseconds here, rounded up
(a lease or a wait is never shorter than asked), so the log carries no floating point;
the state machine re-checks the limits it relies on (see server.fsm.lock_rules).
"""

from __future__ import annotations

import math
from decimal import Decimal

from dsync.fsm.v1 import lock_pb2 as fsm_lock_pb2
from dsync.v1 import common_pb2, lock_pb2
from server.api.errors import invalid
from server.fsm.lock_rules import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_TIMEOUT_MS,
    MAX_TTL_MS,
    duration_problem,
    name_problem,
)
from server.fsm.lock_state import Mode


def check_name(field: str, value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise invalid(field, problem)
    return value


def milliseconds(field: str, seconds: float, maximum_ms: int) -> int:
    """`seconds` as whole milliseconds, rounded up; 0 stays 0 (the field's default)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise invalid(field, f"{seconds} is not a number of seconds: give 0 to {maximum_ms // 1000}")
    # Decimal of the shortest repr: 1.1 s is 1100 ms, not the 1101 that 1.1 * 1000 rounds up to.
    ms = math.ceil(Decimal(repr(seconds)) * 1000)
    problem = duration_problem(ms, maximum_ms)
    if problem is not None:
        raise invalid(field, problem)
    return ms


def mode(value: lock_pb2.LockMode.ValueType) -> Mode:
    if value == lock_pb2.LOCK_MODE_UNSPECIFIED:
        return Mode.EXCLUSIVE
    if value not in (lock_pb2.LOCK_MODE_EXCLUSIVE, lock_pb2.LOCK_MODE_SHARED):
        raise invalid("mode", f"unknown value {value}: use LOCK_MODE_EXCLUSIVE or LOCK_MODE_SHARED")
    return Mode(value)


def linearizable(consistency: common_pb2.Consistency.ValueType) -> bool:
    """Whether a read must wait for a read barrier first (the default)."""
    if consistency in (common_pb2.CONSISTENCY_UNSPECIFIED, common_pb2.CONSISTENCY_LINEARIZABLE):
        return True
    if consistency == common_pb2.CONSISTENCY_LOCAL:
        return False
    raise invalid("consistency", f"unknown value {consistency}: use CONSISTENCY_LINEARIZABLE or CONSISTENCY_LOCAL")


def acquire(request: lock_pb2.AcquireRequest) -> fsm_lock_pb2.LockCommand.Acquire:
    return fsm_lock_pb2.LockCommand.Acquire(
        resource=check_name("resource", request.resource),
        owner=check_name("owner", request.owner),
        mode=mode(request.mode).wire,
        timeout_ms=milliseconds("timeout", request.timeout, MAX_TIMEOUT_MS),
        ttl_ms=milliseconds("ttl", request.ttl, MAX_TTL_MS),
    )


def release(request: lock_pb2.ReleaseRequest) -> fsm_lock_pb2.LockCommand.Release:
    return fsm_lock_pb2.LockCommand.Release(
        resource=check_name("resource", request.resource), owner=check_name("owner", request.owner)
    )


def refresh(request: lock_pb2.RefreshRequest) -> fsm_lock_pb2.LockCommand.Refresh:
    return fsm_lock_pb2.LockCommand.Refresh(
        resource=check_name("resource", request.resource),
        owner=check_name("owner", request.owner),
        ttl_ms=milliseconds("ttl", request.ttl, MAX_TTL_MS),
    )


def check_validate(request: lock_pb2.ValidateRequest) -> None:
    check_name("resource", request.resource)
    check_name("owner", request.owner)
    if request.fencing_token == 0:
        raise invalid("fencing_token", "required: the token Acquire returned (tokens start at 1)")


def page_size(request: lock_pb2.ListLocksRequest) -> int:
    if request.page_size > MAX_PAGE_SIZE:
        raise invalid("page_size", f"{request.page_size}; at most {MAX_PAGE_SIZE}: page through with page_token")
    return request.page_size or DEFAULT_PAGE_SIZE


def check_list(request: lock_pb2.ListLocksRequest) -> None:
    """prefix and page_token may be empty; otherwise they are (parts of) resource names."""
    if request.prefix:
        check_name("prefix", request.prefix)
    if request.page_token:
        check_name("page_token", request.page_token)
