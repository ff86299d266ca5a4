"""The lock state machine's data: one `Lock` per resource that anyone holds or waits
for, and its exact snapshot encoding.

A resource nobody holds or waits for has no `Lock` at all: fencing tokens count grants
machine-wide (`LockSnapshot.last_token`), so nothing about a free resource needs
remembering and memory follows the locks in use, not every name ever locked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from dsync.fsm.v1 import lock_pb2 as fsm_lock_pb2
from dsync.v1 import lock_pb2


class Mode(enum.IntEnum):
    """How a lock is held or asked for; the values are dsync.v1.LockMode's."""

    EXCLUSIVE = lock_pb2.LOCK_MODE_EXCLUSIVE
    SHARED = lock_pb2.LOCK_MODE_SHARED

    @property
    def wire(self) -> lock_pb2.LockMode.ValueType:
        return lock_pb2.LockMode.ValueType(self.value)

    @property
    def adverb(self) -> str:
        return "exclusively" if self is Mode.EXCLUSIVE else "shared"


def conflicts(a: Mode, b: Mode) -> bool:
    """Whether two owners may not hold a lock in these modes at the same time."""
    return a is Mode.EXCLUSIVE or b is Mode.EXCLUSIVE


@dataclass(slots=True)
class Holder:
    owner: str
    token: int
    ttl_ms: int
    expires_ms: int  # provisional (now + ttl) until started
    started: bool = False  # see LockMachine: a lease counts from the clock entry after its grant


@dataclass(slots=True)
class Waiter:
    owner: str
    mode: Mode
    ttl_ms: int  # the lease it gets once granted
    timeout_ms: int
    deadline_ms: int  # provisional (now + timeout) until started
    upgrade: bool = False  # a shared holder waiting for exclusive: always first in line
    started: bool = False


@dataclass(slots=True)
class Lock:
    """Invariants, true after every command: holders all hold in `mode`; the queue's
    first waiter cannot be granted yet (else it would have been); a resource with
    neither holders nor waiters has no Lock."""

    mode: Mode = Mode.EXCLUSIVE
    holders: dict[str, Holder] = field(default_factory=dict)  # by owner, in grant (token) order
    waiters: list[Waiter] = field(default_factory=list)  # FIFO

    def waiter(self, owner: str) -> tuple[int, Waiter] | None:
        """The owner's place in the queue and its request, if it waits."""
        for position, waiter in enumerate(self.waiters):
            if waiter.owner == owner:
                return position, waiter
        return None

    def blockers(self, owner: str, mode: Mode, ahead: list[Waiter]) -> list[tuple[str, bool]]:
        """Who a request of `owner` for `mode`, queued behind `ahead`, waits for: the
        conflicting holders, then the conflicting requests ahead of it (FIFO makes it
        wait for those too).  Each as (owner, holds)."""
        found = [(h.owner, True) for h in self.holders.values() if h.owner != owner and conflicts(self.mode, mode)]
        found += [(w.owner, False) for w in ahead if w.owner != owner and conflicts(w.mode, mode)]
        return found

    def describe_holders(self, now_ms: int) -> str:
        """'held exclusively by alice (token 3, lease ends in 2.5 s)', for refusals."""
        if not self.holders:
            return "free"
        shown = [
            f"{h.owner} (token {h.token}, lease ends in {(h.expires_ms - now_ms) / 1000:g} s)"
            for h in list(self.holders.values())[:5]
        ]
        more = len(self.holders) - len(shown)
        return f"held {self.mode.adverb} by {', '.join(shown)}" + (f" and {more} more" if more > 0 else "")


def encode(locks: dict[str, Lock], last_token: int) -> bytes:
    snap = fsm_lock_pb2.LockSnapshot(last_token=last_token)
    for resource in sorted(locks):
        lock = locks[resource]
        entry = snap.locks.add(resource=resource, mode=lock.mode.wire)
        for h in lock.holders.values():
            entry.holders.add(
                owner=h.owner, fencing_token=h.token, ttl_ms=h.ttl_ms, expires_ms=h.expires_ms, started=h.started
            )
        for w in lock.waiters:
            entry.waiters.add(
                owner=w.owner,
                mode=w.mode.wire,
                ttl_ms=w.ttl_ms,
                timeout_ms=w.timeout_ms,
                deadline_ms=w.deadline_ms,
                upgrade=w.upgrade,
                started=w.started,
            )
    return snap.SerializeToString(deterministic=True)


def decode(data: bytes) -> tuple[dict[str, Lock], int]:
    """The locks and last token of a snapshot; ValueError if it cannot be one of ours."""
    try:
        snap = fsm_lock_pb2.LockSnapshot.FromString(data)
        locks: dict[str, Lock] = {}
        for entry in snap.locks:
            lock = Lock(mode=Mode(entry.mode))
            for h in entry.holders:
                lock.holders[h.owner] = Holder(h.owner, h.fencing_token, h.ttl_ms, h.expires_ms, h.started)
            lock.waiters = [
                Waiter(w.owner, Mode(w.mode), w.ttl_ms, w.timeout_ms, w.deadline_ms, w.upgrade, w.started)
                for w in entry.waiters
            ]
            locks[entry.resource] = lock
    except (DecodeError, ValueError) as exc:  # ValueError: a mode value no dsync writes
        raise ValueError(f"corrupt lock snapshot: {exc}") from exc
    return locks, snap.last_token
