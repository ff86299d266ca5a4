"""The lock state as the public API shows it: dsync.v1 messages built from `Lock`s.

Durations are reported relative to the state machine's time (`now_ms`), which lags
the leader's clock by at most one clock entry: what a reader learns is how long a lease
has left in cluster time, the only time leases are counted in.
"""

from __future__ import annotations

from dsync.v1 import lock_pb2
from server.fsm.lock_state import Holder, Lock, Mode


def seconds(ms: int) -> float:
    return ms / 1000


def grant(resource: str, mode: Mode, holder: Holder, now_ms: int) -> lock_pb2.AcquireResponse:
    return lock_pb2.AcquireResponse(
        resource=resource,
        owner=holder.owner,
        mode=mode.wire,
        fencing_token=holder.token,
        ttl_seconds=seconds(holder.ttl_ms),
        expires_in_seconds=seconds(holder.expires_ms - now_ms),
    )


def renewal(grant: lock_pb2.AcquireResponse) -> lock_pb2.RefreshResponse:
    """A held lease as Refresh reports it: the same fields as the grant it renews."""
    return lock_pb2.RefreshResponse(
        resource=grant.resource,
        owner=grant.owner,
        mode=grant.mode,
        fencing_token=grant.fencing_token,
        ttl_seconds=grant.ttl_seconds,
        expires_in_seconds=grant.expires_in_seconds,
    )


def info(resource: str, lock: Lock | None, now_ms: int) -> lock_pb2.LockInfo:
    """A free resource (no Lock) shows no mode, holders or waiters."""
    view = lock_pb2.LockInfo(resource=resource)
    if lock is None:
        return view
    if lock.holders:
        view.mode = lock.mode.wire
    for h in lock.holders.values():
        view.holders.add(
            owner=h.owner,
            fencing_token=h.token,
            ttl_seconds=seconds(h.ttl_ms),
            expires_in_seconds=seconds(h.expires_ms - now_ms),
        )
    for w in lock.waiters:
        view.waiters.add(
            owner=w.owner,
            mode=w.mode.wire,
            upgrade=w.upgrade,
            expires_in_seconds=seconds(w.deadline_ms - now_ms),
        )
    return view
