"""LockService calls, and what their answers mean in Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsync.v1 import lock_pb2

from .errors import NotHeld
from .ops import ConsistencyName, Op, consistency, method

Mode = Literal["exclusive", "shared"]
_MODES: dict[str, lock_pb2.LockMode.ValueType] = {
    "exclusive": lock_pb2.LOCK_MODE_EXCLUSIVE,
    "shared": lock_pb2.LOCK_MODE_SHARED,
}
# In answers, UNSPECIFIED means the lock is free.
_NAMES = {lock_pb2.LOCK_MODE_EXCLUSIVE: "exclusive", lock_pb2.LOCK_MODE_SHARED: "shared"}

ACQUIRE = method(lock_pb2.DESCRIPTOR, "LockService", "Acquire", lock_pb2.AcquireResponse)
RELEASE = method(lock_pb2.DESCRIPTOR, "LockService", "Release", lock_pb2.ReleaseResponse)
REFRESH = method(lock_pb2.DESCRIPTOR, "LockService", "Refresh", lock_pb2.RefreshResponse)
VALIDATE = method(lock_pb2.DESCRIPTOR, "LockService", "Validate", lock_pb2.ValidateResponse)
GET_LOCK = method(lock_pb2.DESCRIPTOR, "LockService", "GetLock", lock_pb2.GetLockResponse)
LIST_LOCKS = method(lock_pb2.DESCRIPTOR, "LockService", "ListLocks", lock_pb2.ListLocksResponse)


@dataclass(frozen=True)
class Grant:
    """A held lock: `token` is its fencing token (pass it to the services the lock
    protects); `expires_in` the seconds its lease had left when the server answered."""

    resource: str
    owner: str
    mode: str
    token: int
    ttl: float
    expires_in: float


@dataclass(frozen=True)
class Holder:
    owner: str
    token: int
    ttl: float
    expires_in: float


@dataclass(frozen=True)
class Waiter:
    owner: str
    mode: str
    upgrade: bool
    expires_in: float


@dataclass(frozen=True)
class LockInfo:
    """One resource as it stands: mode "exclusive", "shared" or "free"; holders in grant
    order, waiters in queue order."""

    resource: str
    mode: str
    holders: tuple[Holder, ...]
    waiters: tuple[Waiter, ...]


def mode_value(mode: Mode) -> lock_pb2.LockMode.ValueType:
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be 'exclusive' or 'shared', not {mode!r}") from None


def _grant(r: lock_pb2.AcquireResponse | lock_pb2.RefreshResponse) -> Grant:
    return Grant(r.resource, r.owner, _NAMES.get(r.mode, "free"), r.fencing_token, r.ttl_seconds, r.expires_in_seconds)


def _info(lock: lock_pb2.LockInfo) -> LockInfo:
    return LockInfo(
        lock.resource,
        _NAMES.get(lock.mode, "free"),
        tuple(Holder(h.owner, h.fencing_token, h.ttl_seconds, h.expires_in_seconds) for h in lock.holders),
        tuple(Waiter(w.owner, _NAMES.get(w.mode, "exclusive"), w.upgrade, w.expires_in_seconds) for w in lock.waiters),
    )


def acquire(resource: str, owner: str, mode: Mode, timeout: float, ttl: float) -> Op[lock_pb2.AcquireResponse, Grant]:
    request = lock_pb2.AcquireRequest(resource=resource, owner=owner, mode=mode_value(mode), timeout=timeout, ttl=ttl)
    return Op(ACQUIRE, request, _grant, wait=timeout)


def release(resource: str, owner: str) -> Op[lock_pb2.ReleaseResponse, int]:
    request = lock_pb2.ReleaseRequest(resource=resource, owner=owner)
    return Op(RELEASE, request, lambda r: r.fencing_token, refine=NotHeld)


def refresh(resource: str, owner: str, ttl: float) -> Op[lock_pb2.RefreshResponse, Grant]:
    request = lock_pb2.RefreshRequest(resource=resource, owner=owner, ttl=ttl)
    return Op(REFRESH, request, _grant, refine=NotHeld)


def validate(
    resource: str, owner: str, token: int, read: ConsistencyName
) -> Op[lock_pb2.ValidateResponse, bool]:
    request = lock_pb2.ValidateRequest(
        resource=resource, owner=owner, fencing_token=token, consistency=consistency(read)
    )
    return Op(VALIDATE, request, lambda r: r.valid)


def get(resource: str, read: ConsistencyName) -> Op[lock_pb2.GetLockResponse, LockInfo]:
    request = lock_pb2.GetLockRequest(resource=resource, consistency=consistency(read))
    return Op(GET_LOCK, request, lambda r: _info(r.lock))


def page(
    prefix: str, page_token: str, read: ConsistencyName
) -> Op[lock_pb2.ListLocksResponse, tuple[list[LockInfo], str]]:
    """One page of ListLocks (the largest the server allows); the second item is the next
    page's token, empty after the last page."""
    request = lock_pb2.ListLocksRequest(
        prefix=prefix, page_size=1000, page_token=page_token, consistency=consistency(read)
    )
    return Op(LIST_LOCKS, request, lambda r: ([_info(lock) for lock in r.locks], r.next_page_token))
