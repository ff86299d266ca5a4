"""The lock state machine's data: one `Lock` per resource that anyone holds or waits
for, and its exact snapshot encoding.

A resource nobody holds or waits for has no `Lock` at all: fencing tokens count grants
machine-wide (`LockSnapshot.last_token`), so nothing about a free resource needs
remembering and memory follows the locks in use, not every name ever locked.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, insort
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
    wait_id: int  # the log index of the entry that queued it: this wait's identity
    upgrade: bool = False  # a shared holder waiting for exclusive (its place: see `rank`)
    started: bool = False
    # A wait queued before waits had ids, restored from a snapshot of then, has wait_id 0
    # and ranks by its place in the queue at the restore.  Another replica that replayed
    # its entry knows the real index, so such a wait answers to any id (an owner has one
    # wait per resource), and names itself 0 in outcomes, events and snapshots.
    legacy_rank: int = 0

    def is_wait(self, wait_id: int) -> bool:
        """Whether `wait_id` names this wait; 0 (from before waits had ids) names the
        owner's wait, whichever it is."""
        return self.wait_id == 0 or wait_id in (0, self.wait_id)

    @property
    def rank(self) -> int:
        """Its place in the queue as a number; `Lock` places, finds and counts requests by
        it alone.  An upgrade (at most one per lock, see LockMachine) comes first: everyone
        queued waits for its shared hold, so behind them it would deadlock.  Everyone else
        comes in arrival order, which is log order, so a new request joins last."""
        return 0 if self.upgrade else self.wait_id or self.legacy_rank


def _rank(waiter: Waiter) -> int:
    return waiter.rank


@dataclass(slots=True)
class Lock:
    """Invariants, true after every command: holders all hold in `mode`; the queue's
    first waiter cannot be granted yet (else it would have been), so whenever anyone
    waits, someone holds and conflicts with the first waiter; the queue is in `rank`
    order; a resource with neither holders nor waiters has no Lock.

    The queue is indexed (by owner, and its exclusive requests apart) so that finding a
    request and the requests it waits for costs O(log n), not a scan: the deadlock search
    asks that for every waiter it passes."""

    mode: Mode = Mode.EXCLUSIVE
    holders: dict[str, Holder] = field(default_factory=dict)  # by owner, in grant (token) order
    waiters: list[Waiter] = field(default_factory=list)  # queue order; change it only through the methods
    _by_owner: dict[str, Waiter] = field(default_factory=dict)
    _exclusive: list[Waiter] = field(default_factory=list)  # the exclusive requests among `waiters`, in order

    def waiter(self, owner: str) -> Waiter | None:
        """The owner's request, if it waits (an owner waits at most once per resource)."""
        return self._by_owner.get(owner)

    def position(self, waiter: Waiter) -> int:
        """How many requests are ahead of a queued one, or would be of one about to queue."""
        return bisect_left(self.waiters, waiter.rank, key=_rank)

    def enqueue(self, waiter: Waiter) -> int:
        """Queue a request in its rank's place; its position."""
        position = self.position(waiter)
        # Ranks must be unique: `remove` finds a wait by its rank alone.
        tied = position < len(self.waiters) and self.waiters[position].rank == waiter.rank
        assert not tied, f"two waits for one lock share rank {waiter.rank}"
        self.waiters.insert(position, waiter)
        if waiter.mode is Mode.EXCLUSIVE:
            insort(self._exclusive, waiter, key=_rank)
        self._by_owner[waiter.owner] = waiter
        return position

    def remove(self, waiter: Waiter) -> None:
        del self.waiters[self.position(waiter)]
        if waiter.mode is Mode.EXCLUSIVE:
            del self._exclusive[bisect_left(self._exclusive, waiter.rank, key=_rank)]
        del self._by_owner[waiter.owner]

    def admits(self, mode: Mode, upgrade: bool = False) -> bool:
        """Whether a request fits beside the current holders, the queue aside: an upgrade
        when its owner holds alone, any request when no one holds, shared beside shared."""
        if upgrade:
            return len(self.holders) == 1
        return not self.holders or not conflicts(self.mode, mode)

    def blockers(self, owner: str, mode: Mode, position: int) -> list[tuple[str, bool]]:
        """Whom a request of `owner` for `mode` with `position` requests ahead of it waits
        for *directly*, as (owner, holds).  FIFO makes it wait for every conflicting
        request ahead and, through them, the holders; it is enough to name the nearest:
        - an exclusive request: the group just ahead of it -- one exclusive request, or a
          run of shared ones;
        - a shared request: the nearest exclusive request ahead;
        - a request with none of those ahead (the head group): the conflicting holders.
        Each named request in turn waits for the group ahead of it, so whoever is waited
        for at all is reached -- exactly the owners a full list would name, through at
        most a few edges per request instead of one per request ahead."""
        nearest = self._exclusive_before(position)
        if mode is Mode.SHARED and nearest is not None:
            return [(nearest.owner, False)]
        if mode is Mode.EXCLUSIVE and position > 0:
            run_start = 0 if nearest is None else self.position(nearest) + 1
            if run_start == position:  # an exclusive request just ahead
                return [(self.waiters[position - 1].owner, False)]
            return [(w.owner, False) for w in self.waiters[run_start:position]]
        if not conflicts(self.mode, mode):
            return []
        return [(h.owner, True) for h in self.holders.values() if h.owner != owner]

    def _exclusive_before(self, position: int) -> Waiter | None:
        """The last exclusive request among the first `position` of the queue."""
        if position >= len(self.waiters):
            count = len(self._exclusive)
        else:
            count = bisect_left(self._exclusive, self.waiters[position].rank, key=_rank)
        return self._exclusive[count - 1] if count else None

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
                wait_id=w.wait_id,
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
            # A wait queued before waits had ids is written without one (wait_id 0) and
            # ranks by its place in the queue (`legacy_rank`).  It took a log entry at or before the
            # snapshot, so every wait queued after it (its own entry's index) ranks higher.
            for position, w in enumerate(entry.waiters, start=1):
                waiter = Waiter(
                    w.owner,
                    Mode(w.mode),
                    w.ttl_ms,
                    w.timeout_ms,
                    w.deadline_ms,
                    w.wait_id,
                    w.upgrade,
                    w.started,
                    legacy_rank=0 if w.wait_id else position,
                )
                if lock.waiters and lock.waiters[-1].rank >= waiter.rank:
                    raise ValueError(f"{entry.resource!r}: waiter {w.owner} has wait id {w.wait_id}, out of order")
                lock.enqueue(waiter)
            locks[entry.resource] = lock
    except (DecodeError, ValueError) as exc:  # ValueError: a mode or a queue no dsync writes
        raise ValueError(f"corrupt lock snapshot: {exc}") from exc
    return locks, snap.last_token
