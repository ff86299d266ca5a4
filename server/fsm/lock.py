"""The lock state machine: reader/writer locks with leases, fencing tokens, FIFO
waiting and deadlock detection, applied identically on every replica.

Rules (the public contract is in protos/dsync/v1/lock.proto):
- Shared holders coexist; an exclusive holder excludes all.  A request that cannot be
  granted fails at once (ABORTED) with timeout 0, else waits in the resource's FIFO
  queue; a request is granted at once only if nobody waits before it, so a shared
  request behind a waiting exclusive one waits too (writers do not starve).
- Every grant takes the next fencing token of a machine-wide counter, so tokens grow
  with each grant of a resource (and are unique across resources) while a free resource
  costs no memory.  Renewals keep the token; an upgrade takes a new one.
- Leases end `ttl` after the grant or last renewal, in state-machine time (the leader's
  clock carried in the log: it never runs while no leader is elected, so a leader change
  never shortens a lease).  `advance` expires leases and waits as time passes, and the
  queue moves on.
- A lease (and a wait's timeout) starts counting at the first clock entry *after* the
  command, not at the one before it: state-machine time is the last clock reading, which
  may be up to a clock interval older than the moment the leader took the command -- even
  older than the moment the client sent it.  Counting from that stale reading would end a
  lease up to one interval before the client's own reckoning (sent + ttl); counting from
  the next reading never does.
- Deadlocks are refused at once: a request that would wait for an owner who, directly
  or through others, waits for the requester fails with ABORTED naming the cycle, and
  changes nothing (see lock_graph).
- Asking again for what one holds (same mode, or shared while holding exclusive)
  returns the current grant and renews its lease.  A shared holder asking for exclusive
  upgrades: at once if it is the only holder, else it waits at the front of the queue
  (everyone queued waits for its shared hold anyway, so behind them it would deadlock)
  keeping its shared hold; a second would-be upgrader waits for the first and vice
  versa, so it is refused as a deadlock.

Each wait is known by its id, the log index of the entry that queued it (returned in
the Queued outcome).  A granted or ended wait is announced with a `LockGranted` or
`LockWaitEnded` event keyed by `wait_key(resource, owner)` and carrying that id, for the
RPCs waiting on that node: the same owner may have had an earlier wait for the same
resource end while its new request was in flight, and only the id tells the two apart.
The wait itself belongs to the cluster: it ends by grant, timeout, or a `Withdraw`
naming its id, whether or not anyone still listens.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from dsync.fsm.v1 import lock_pb2 as fsm_lock_pb2
from dsync.v1 import lock_pb2
from server.fsm import lock_state, lock_views
from server.fsm.base import ApplyContext, Code, Refusal, Result
from server.fsm.lock_graph import Edge, describe, find_cycle
from server.fsm.lock_rules import (
    DEFAULT_TTL_MS,
    MAX_OWNERS_PER_LOCK,
    MAX_TIMEOUT_MS,
    MAX_TTL_MS,
    duration_problem,
    name_problem,
)
from server.fsm.lock_state import Holder, Lock, Mode, Waiter
from server.fsm.lock_timers import LEASE, WAIT, Timer, Timers

WaitKey = tuple[str, str, str]


def wait_key(resource: str, owner: str) -> WaitKey:
    """The event key of `owner`'s wait for `resource` (see server.api.events)."""
    return ("lock", resource, owner)


@dataclass(frozen=True, slots=True)
class LockGranted:
    """A queued request was granted."""

    key: WaitKey
    wait_id: int
    response: lock_pb2.AcquireResponse


@dataclass(frozen=True, slots=True)
class LockWaitEnded:
    """A queued request left the queue without a grant; `message` says why and who holds."""

    key: WaitKey
    wait_id: int
    message: str


def _mode(value: int) -> Mode | Refusal:
    """A command's mode: UNSPECIFIED means exclusive."""
    if value == lock_pb2.LOCK_MODE_UNSPECIFIED:
        return Mode.EXCLUSIVE
    if value in (Mode.EXCLUSIVE, Mode.SHARED):
        return Mode(value)
    return Refusal(Code.INVALID_ARGUMENT, f"mode: {value} is not a lock mode; use EXCLUSIVE or SHARED")


def _covers(held: Mode, asked: Mode) -> bool:
    """Whether holding in `held` already gives what `asked` asks for."""
    return held is Mode.EXCLUSIVE or asked is Mode.SHARED


def _check(resource: str, owner: str, **durations: tuple[int, int]) -> Refusal | None:
    """The first problem with a command's fields, named as in the public request."""
    for field, value in (("resource", resource), ("owner", owner)):
        problem = name_problem(value)
        if problem:
            return Refusal(Code.INVALID_ARGUMENT, f"{field}: {problem}")
    for field, (ms, maximum) in durations.items():
        problem = duration_problem(ms, maximum)
        if problem:
            return Refusal(Code.INVALID_ARGUMENT, f"{field}: {problem}")
    return None


def _edges_for(resource: str, lock: Lock, waiter: Waiter) -> list[Edge]:
    """A request's out-edges in the wait-for graph, whether queued or about to be: the
    deadlock check must see a new request exactly as the graph will once it is queued."""
    blockers = lock.blockers(waiter.owner, waiter.mode, lock.position(waiter))
    return [Edge(waiter.owner, resource, b, holds, waiter.mode) for b, holds in blockers]


def _queued(ahead: int, waiter: Waiter) -> fsm_lock_pb2.LockAcquireOutcome:
    queued = fsm_lock_pb2.LockAcquireOutcome.Queued(ahead=ahead, wait_id=waiter.wait_id)
    return fsm_lock_pb2.LockAcquireOutcome(queued=queued)


def _granted(response: lock_pb2.AcquireResponse) -> fsm_lock_pb2.LockAcquireOutcome:
    return fsm_lock_pb2.LockAcquireOutcome(granted=response)


class LockMachine:
    """Implements `server.fsm.base.Component` for the "lock" commands, plus the reads
    the servicer makes after a read barrier."""

    def __init__(self) -> None:
        self._locks: dict[str, Lock] = {}
        self._names: list[str] = []  # the keys of _locks, sorted, for ListLocks pages
        self._waiting: dict[str, set[str]] = {}  # owner -> resources it waits for
        self._last_token = 0
        self._timers = Timers(self._live_timers)
        # Leases and waits whose time starts at the next clock entry: (kind, resource, owner).
        self._starting: list[tuple[int, str, str]] = []

    # ------------------------------------------------------------------ Component

    def apply(self, command: bytes, ctx: ApplyContext) -> Result:
        try:
            cmd = fsm_lock_pb2.LockCommand.FromString(command)
        except DecodeError:
            return Refusal(Code.INVALID_ARGUMENT, "not a lock command: the bytes could not be decoded")
        op = cmd.WhichOneof("op")
        if op == "acquire":
            return self._acquire(cmd.acquire, ctx)
        if op == "release":
            return self._release(cmd.release, ctx)
        if op == "refresh":
            return self._refresh(cmd.refresh, ctx)
        if op == "withdraw":
            return self._withdraw(cmd.withdraw, ctx)
        return Refusal(Code.INVALID_ARGUMENT, "the lock command names no operation")

    def advance(self, ctx: ApplyContext) -> None:
        self._start(ctx.now_ms)
        for due_ms, kind, resource, owner in self._timers.due(ctx.now_ms):
            lock = self._locks.get(resource)
            if lock is None:
                continue  # stale: the lock is gone
            if kind == LEASE:
                holder = lock.holders.get(owner)
                if holder is not None and holder.started and holder.expires_ms == due_ms:
                    self._drop_holder(resource, lock, owner, "its lease expired", ctx)
                continue
            waiter = lock.waiter(owner)
            if waiter is not None and waiter.started and waiter.deadline_ms == due_ms:
                message = f"timed out waiting for {resource!r}: it is still {lock.describe_holders(ctx.now_ms)}"
                self._drop_waiter(resource, lock, waiter, message, ctx)

    def snapshot(self) -> bytes:
        return lock_state.encode(self._locks, self._last_token)

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        twin = LockMachine()
        twin._load(data)

        def install() -> None:
            self._locks, self._last_token, self._names = twin._locks, twin._last_token, twin._names
            self._waiting, self._starting = twin._waiting, twin._starting
            self._timers.adopt(twin._timers)

        return install

    def _load(self, data: bytes) -> None:
        locks, last_token = lock_state.decode(data)
        self._locks = locks
        self._last_token = last_token
        self._names = sorted(locks)
        self._waiting = {}
        self._starting = []
        for resource, lock in locks.items():
            self._starting += [(LEASE, resource, h.owner) for h in lock.holders.values() if not h.started]
            for waiter in lock.waiters:
                self._waiting.setdefault(waiter.owner, set()).add(resource)
                if not waiter.started:
                    self._starting.append((WAIT, resource, waiter.owner))
        self._timers.rebuild()

    # ------------------------------------------------------------------ reads

    def describe(self, resource: str, now_ms: int) -> lock_pb2.LockInfo:
        return lock_views.info(resource, self._locks.get(resource), now_ms)

    def page(self, prefix: str, after: str, limit: int, now_ms: int) -> tuple[list[lock_pb2.LockInfo], str]:
        """Up to `limit` locks named `prefix`… after `after`, in name order, and the
        name to continue after ("" when there are no more)."""
        names = self._names
        start = bisect_left(names, prefix)
        if after:
            start = max(start, bisect_right(names, after))
        chosen = [name for name in names[start : start + limit] if name.startswith(prefix)]
        end = start + len(chosen)
        more = len(chosen) == limit and end < len(names) and names[end].startswith(prefix)
        return [lock_views.info(name, self._locks[name], now_ms) for name in chosen], chosen[-1] if more else ""

    def validate(self, resource: str, owner: str, token: int, now_ms: int) -> lock_pb2.ValidateResponse:
        lock = self._locks.get(resource)
        holder = lock.holders.get(owner) if lock is not None else None
        if lock is None or holder is None or holder.token != token:
            return lock_pb2.ValidateResponse(valid=False)
        return lock_pb2.ValidateResponse(
            valid=True, mode=lock.mode.wire, expires_in_seconds=lock_views.seconds(holder.expires_ms - now_ms)
        )

    def holding(self, resource: str, owner: str, mode: Mode, now_ms: int) -> lock_pb2.AcquireResponse | None:
        """The owner's grant if it holds `resource` in a mode that gives `mode`."""
        lock = self._locks.get(resource)
        holder = lock.holders.get(owner) if lock is not None else None
        if lock is None or holder is None or not _covers(lock.mode, mode):
            return None
        return lock_views.grant(resource, lock.mode, holder, now_ms)

    def totals(self) -> tuple[int, int, int]:
        """(locks held or waited for, holders, waiters) over every resource, for metrics."""
        holders = waiters = 0
        for lock in self._locks.values():
            holders += len(lock.holders)
            waiters += len(lock.waiters)
        return len(self._locks), holders, waiters

    def waits(self, resource: str, owner: str) -> bool:
        return resource in self._waiting.get(owner, ())

    def wait_queued(self, resource: str, owner: str, wait_id: int) -> bool:
        """Whether that very wait (not just some wait of the owner's) is still queued."""
        lock = self._locks.get(resource)
        waiter = lock.waiter(owner) if lock is not None else None
        return waiter is not None and waiter.is_wait(wait_id)

    # ------------------------------------------------------------------ commands

    def _acquire(self, req: fsm_lock_pb2.LockCommand.Acquire, ctx: ApplyContext) -> Result:
        refusal = _check(
            req.resource, req.owner, timeout=(req.timeout_ms, MAX_TIMEOUT_MS), ttl=(req.ttl_ms, MAX_TTL_MS)
        )
        mode = _mode(req.mode)
        if isinstance(mode, Refusal):
            return refusal or mode
        if refusal is not None:
            return refusal
        resource, owner, now = req.resource, req.owner, ctx.now_ms
        ttl_ms = req.ttl_ms or DEFAULT_TTL_MS
        lock = self._locks.get(resource) or Lock()
        holder = lock.holders.get(owner)

        if holder is not None and _covers(lock.mode, mode):
            self._renew(resource, holder, ttl_ms, now)
            return _granted(lock_views.grant(resource, lock.mode, holder, now))

        waiter = lock.waiter(owner)
        if waiter is not None:
            return self._rejoin(resource, lock, waiter, mode, req.timeout_ms, now)

        if holder is not None:  # a shared holder asks for exclusive
            upgrade = True
            ready = lock.admits(mode, upgrade)
            # Granting it at once changes no edge of the wait-for graph, so it cannot close
            # a cycle: the queue's head, if any, is an exclusive request (a shared one would
            # have been granted beside the shared holder) that already waits for the owner,
            # and everyone behind it waits through it (see lock_graph).
        else:
            upgrade = False
            ready = not lock.waiters and lock.admits(mode)
            if len(lock.holders) + len(lock.waiters) >= MAX_OWNERS_PER_LOCK:
                return Refusal(
                    Code.RESOURCE_EXHAUSTED,
                    f"{resource!r} already has {MAX_OWNERS_PER_LOCK} owners holding or waiting (the limit): "
                    "retry later",
                )
        if ready:
            self._adopt(resource, lock)
            return _granted(self._grant(resource, lock, owner, mode, ttl_ms, now))
        if req.timeout_ms == 0:
            return self._busy(resource, lock, now, "")
        waiter = Waiter(owner, mode, ttl_ms, req.timeout_ms, now + req.timeout_ms, ctx.index, upgrade)
        return self._enqueue(resource, lock, waiter)

    def _rejoin(self, resource: str, lock: Lock, waiter: Waiter, mode: Mode, timeout_ms: int, now: int) -> Result:
        """Asked again while waiting: the same wait (a retry without a header, say), not a second place."""
        if waiter.mode is not mode:
            return Refusal(
                Code.FAILED_PRECONDITION,
                f"{waiter.owner} already waits for {resource!r} in {waiter.mode.name.lower()} mode; "
                "wait for that request to end before asking for another mode",
            )
        if timeout_ms == 0:
            return self._busy(resource, lock, now, f"; {waiter.owner}'s earlier request still waits")
        return _queued(lock.position(waiter), waiter)

    def _enqueue(self, resource: str, lock: Lock, waiter: Waiter) -> Result:
        """Queue a request in its rank's place unless it would deadlock."""
        cycle = find_cycle(_edges_for(resource, lock, waiter), self._edges)
        if cycle is not None:
            return Refusal(
                Code.ABORTED,
                f"deadlock: {describe(cycle)}; this request was refused and nothing changed: "
                "release a lock in the cycle, or acquire resources in one global order",
            )
        position = lock.enqueue(waiter)
        self._waiting.setdefault(waiter.owner, set()).add(resource)
        self._starting.append((WAIT, resource, waiter.owner))
        return _queued(position, waiter)

    def _release(self, req: fsm_lock_pb2.LockCommand.Release, ctx: ApplyContext) -> Result:
        refusal = _check(req.resource, req.owner)
        if refusal is not None:
            return refusal
        lock = self._locks.get(req.resource)
        holder = lock.holders.get(req.owner) if lock is not None else None
        if lock is None or holder is None:
            return self._not_held(req.resource, req.owner, lock, ctx.now_ms, "release")
        self._drop_holder(req.resource, lock, req.owner, "it released it", ctx)
        return lock_pb2.ReleaseResponse(resource=req.resource, owner=req.owner, fencing_token=holder.token)

    def _refresh(self, req: fsm_lock_pb2.LockCommand.Refresh, ctx: ApplyContext) -> Result:
        refusal = _check(req.resource, req.owner, ttl=(req.ttl_ms, MAX_TTL_MS))
        if refusal is not None:
            return refusal
        lock = self._locks.get(req.resource)
        holder = lock.holders.get(req.owner) if lock is not None else None
        if lock is None or holder is None:
            return self._not_held(req.resource, req.owner, lock, ctx.now_ms, "refresh")
        self._renew(req.resource, holder, req.ttl_ms or holder.ttl_ms, ctx.now_ms)
        return lock_views.renewal(lock_views.grant(req.resource, lock.mode, holder, ctx.now_ms))

    def _withdraw(self, req: fsm_lock_pb2.LockCommand.Withdraw, ctx: ApplyContext) -> Result:
        refusal = _check(req.resource, req.owner)
        mode = _mode(req.mode)
        if isinstance(mode, Refusal):
            return refusal or mode
        if refusal is not None:
            return refusal
        lock = self._locks.get(req.resource)
        waiter = lock.waiter(req.owner) if lock is not None else None
        if lock is not None and waiter is not None and waiter.is_wait(req.wait_id):
            message = (
                f"no grant of {req.resource!r} within the timeout (cluster time stalled: was no leader "
                f"elected?); it is {lock.describe_holders(ctx.now_ms)}"
            )
            self._drop_waiter(req.resource, lock, waiter, message, ctx)
            return Refusal(Code.ABORTED, message)
        grant = self.holding(req.resource, req.owner, mode, ctx.now_ms)
        if grant is None:
            return Refusal(
                Code.ABORTED,
                f"{req.owner}'s wait for {req.resource!r} (wait {req.wait_id}) is over, and {req.owner} does "
                f"not hold it {mode.adverb} now (not granted, or granted and its lease since ended): acquire "
                "again with a new request",
            )
        return _granted(grant)

    # ------------------------------------------------------------------ transitions

    def _grant(
        self, resource: str, lock: Lock, owner: str, mode: Mode, ttl_ms: int, now: int
    ) -> lock_pb2.AcquireResponse:
        self._last_token += 1
        lock.holders.pop(owner, None)  # an upgrade moves to the end: holders stay in token order
        holder = Holder(owner, self._last_token, ttl_ms, now + ttl_ms)
        lock.holders[owner] = holder
        lock.mode = mode
        self._starting.append((LEASE, resource, owner))
        return lock_views.grant(resource, mode, holder, now)

    def _renew(self, resource: str, holder: Holder, ttl_ms: int, now: int) -> None:
        holder.ttl_ms = ttl_ms
        holder.expires_ms = now + ttl_ms
        if holder.started:
            holder.started = False
            self._starting.append((LEASE, resource, holder.owner))

    def _start(self, now: int) -> None:
        """The first clock entry since these leases and waits began: their time runs from here."""
        starting, self._starting = self._starting, []
        for kind, resource, owner in starting:
            lock = self._locks.get(resource)
            if lock is None:
                continue
            if kind == LEASE:
                holder = lock.holders.get(owner)
                if holder is not None and not holder.started:
                    holder.started = True
                    holder.expires_ms = now + holder.ttl_ms
                    self._timers.add(holder.expires_ms, LEASE, resource, owner)
                continue
            waiter = lock.waiter(owner)
            if waiter is not None and not waiter.started:
                waiter.started = True
                waiter.deadline_ms = now + waiter.timeout_ms
                self._timers.add(waiter.deadline_ms, WAIT, resource, owner)

    def _drop_holder(self, resource: str, lock: Lock, owner: str, why: str, ctx: ApplyContext) -> None:
        del lock.holders[owner]
        if lock.waiters and lock.waiters[0].upgrade and lock.waiters[0].owner == owner:
            message = f"{owner} no longer holds {resource!r} shared ({why}), so its upgrade to exclusive ended"
            self._drop_waiter(resource, lock, lock.waiters[0], message, ctx)
        else:
            self._settle(resource, lock, ctx)

    def _drop_waiter(self, resource: str, lock: Lock, waiter: Waiter, message: str, ctx: ApplyContext) -> None:
        lock.remove(waiter)
        self._unwait(waiter.owner, resource)
        ctx.emit(LockWaitEnded(wait_key(resource, waiter.owner), waiter.wait_id, message))
        self._settle(resource, lock, ctx)

    def _settle(self, resource: str, lock: Lock, ctx: ApplyContext) -> None:
        """Grant the queue's head for as long as it can be granted, then forget the lock if idle."""
        while lock.waiters:
            first = lock.waiters[0]
            if not lock.admits(first.mode, first.upgrade):
                break
            lock.remove(first)
            self._unwait(first.owner, resource)
            response = self._grant(resource, lock, first.owner, first.mode, first.ttl_ms, ctx.now_ms)
            ctx.emit(LockGranted(wait_key(resource, first.owner), first.wait_id, response))
        if not lock.holders and not lock.waiters:
            del self._locks[resource]
            del self._names[bisect_left(self._names, resource)]

    def _adopt(self, resource: str, lock: Lock) -> None:
        """Start tracking a lock that is about to get its first holder."""
        if resource not in self._locks:
            self._locks[resource] = lock
            insort(self._names, resource)

    def _unwait(self, owner: str, resource: str) -> None:
        resources = self._waiting[owner]
        resources.discard(resource)
        if not resources:
            del self._waiting[owner]

    # ------------------------------------------------------------------ helpers

    def _edges(self, owner: str) -> list[Edge]:
        """The owner's out-edges in the wait-for graph, in a deterministic order."""
        edges: list[Edge] = []
        for resource in sorted(self._waiting.get(owner, ())):
            lock = self._locks[resource]
            waiter = lock.waiter(owner)
            assert waiter is not None, f"{owner} is indexed as waiting for {resource!r} but is not queued"
            edges += _edges_for(resource, lock, waiter)
        return edges

    def _live_timers(self) -> list[Timer]:
        timers: list[Timer] = []
        for resource, lock in self._locks.items():
            timers += [(h.expires_ms, LEASE, resource, h.owner) for h in lock.holders.values() if h.started]
            timers += [(w.deadline_ms, WAIT, resource, w.owner) for w in lock.waiters if w.started]
        return timers

    def _busy(self, resource: str, lock: Lock, now: int, note: str) -> Refusal:
        queue = f"; {len(lock.waiters)} request(s) wait for it" if lock.waiters else ""
        return Refusal(
            Code.ABORTED,
            f"{resource!r} is {lock.describe_holders(now)}{queue}{note}: retry later, or pass a timeout to wait",
        )

    def _not_held(self, resource: str, owner: str, lock: Lock | None, now: int, verb: str) -> Refusal:
        state = "free" if lock is None else lock.describe_holders(now)
        waiting = "; it waits for it (a wait ends by grant or timeout)" if self.waits(resource, owner) else ""
        return Refusal(
            Code.FAILED_PRECONDITION,
            f"{owner} does not hold {resource!r}, which is {state}{waiting}: nothing to {verb}, nothing changed",
        )
