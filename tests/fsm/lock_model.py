"""A reference model of the lock rules, written for obviousness rather than speed: full
scans instead of heaps and indexes, a from-scratch graph search for deadlocks, time
handled by repeatedly taking the earliest due lease or wait.  Leases and waits start
counting at the first tick after the operation that began them.  The property tests drive
it and `LockMachine` with the same operations and require the same answers.

A wait's id is the log index of the operation that queued it.

Outcomes are normalised tuples:
    ("granted", owner, token, mode) | ("queued", ahead, wait_id) | ("refused", code, is_deadlock)
    ("released", token) | ("refreshed", token, ttl_ms)
Events: ("granted", resource, owner, token, wait_id) | ("ended", resource, owner, wait_id)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.fsm.base import Code
from server.fsm.lock_rules import DEFAULT_TTL_MS
from server.fsm.lock_state import Mode

X, S = Mode.EXCLUSIVE, Mode.SHARED
Outcome = tuple[object, ...]


@dataclass
class MHolder:
    owner: str
    token: int
    ttl: int
    expires: int
    started: bool = False


@dataclass
class MWaiter:
    owner: str
    mode: Mode
    ttl: int
    timeout: int
    deadline: int
    upgrade: bool
    wait_id: int
    started: bool = False


@dataclass
class MLock:
    mode: Mode = X
    holders: list[MHolder] = field(default_factory=list)
    queue: list[MWaiter] = field(default_factory=list)

    def holder(self, owner: str) -> MHolder | None:
        return next((h for h in self.holders if h.owner == owner), None)

    def waiter(self, owner: str) -> int | None:
        return next((i for i, w in enumerate(self.queue) if w.owner == owner), None)


def clash(a: Mode, b: Mode) -> bool:
    return X in (a, b)


@dataclass
class Model:
    locks: dict[str, MLock] = field(default_factory=dict)
    token: int = 0
    now: int = 0
    events: list[Outcome] = field(default_factory=list)

    # ---------------------------------------------------------------- operations

    def acquire(self, r: str, o: str, mode: Mode, timeout: int, ttl: int, index: int) -> Outcome:
        ttl = ttl or DEFAULT_TTL_MS
        lk = self.locks.get(r)
        if lk is None:
            lk = self.locks[r] = MLock()
        h = lk.holder(o)
        if h is not None and (lk.mode is X or mode is S):
            h.ttl, h.expires, h.started = ttl, self.now + ttl, False
            return ("granted", o, h.token, lk.mode)
        pos = lk.waiter(o)
        if pos is not None:
            if lk.queue[pos].mode is not mode:
                return ("refused", Code.FAILED_PRECONDITION, False)
            return ("refused", Code.ABORTED, False) if timeout == 0 else ("queued", pos, lk.queue[pos].wait_id)
        if h is not None:  # upgrade
            if len(lk.holders) == 1:
                return self._grant(r, lk, o, X, ttl)
            blockers = [x.owner for x in lk.holders if x.owner != o]
            place = 0
        else:
            if not lk.queue and (not lk.holders or (mode is S and lk.mode is S)):
                return self._grant(r, lk, o, mode, ttl)
            blockers = [x.owner for x in lk.holders if clash(lk.mode, mode)]
            blockers += [w.owner for w in lk.queue if clash(w.mode, mode)]
            place = len(lk.queue)
        if timeout == 0:
            return ("refused", Code.ABORTED, False)
        if any(self.reaches(b, o) for b in blockers):
            return ("refused", Code.ABORTED, True)
        upgrade = h is not None
        lk.queue.insert(place, MWaiter(o, X if upgrade else mode, ttl, timeout, self.now + timeout, upgrade, index))
        return ("queued", place, index)

    def release(self, r: str, o: str) -> Outcome:
        lk = self.locks.get(r)
        h = lk.holder(o) if lk else None
        if lk is None or h is None:
            return ("refused", Code.FAILED_PRECONDITION, False)
        self._drop_holder(r, lk, h)
        return ("released", h.token)

    def refresh(self, r: str, o: str, ttl: int) -> Outcome:
        lk = self.locks.get(r)
        h = lk.holder(o) if lk else None
        if lk is None or h is None:
            return ("refused", Code.FAILED_PRECONDITION, False)
        h.ttl = ttl or h.ttl
        h.expires, h.started = self.now + h.ttl, False
        return ("refreshed", h.token, h.ttl)

    def withdraw(self, r: str, o: str, mode: Mode, wait_id: int) -> Outcome:
        lk = self.locks.get(r)
        if lk is None:
            return ("refused", Code.ABORTED, False)
        pos = lk.waiter(o)
        # wait_id 0: a Withdraw logged before waits had ids, which named the owner's wait.
        if pos is not None and wait_id in (0, lk.queue[pos].wait_id):
            self._drop_waiter(r, lk, pos)
            return ("refused", Code.ABORTED, False)
        h = lk.holder(o)
        if h is not None and (lk.mode is X or mode is S):
            return ("granted", o, h.token, lk.mode)
        return ("refused", Code.ABORTED, False)

    def tick(self, ms: int) -> None:
        self.now += ms
        for lk in self.locks.values():
            for h in lk.holders:
                if not h.started:
                    h.expires, h.started = self.now + h.ttl, True
            for w in lk.queue:
                if not w.started:
                    w.deadline, w.started = self.now + w.timeout, True
        while True:
            due = [(h.expires, 0, r, h.owner) for r, lk in self.locks.items() for h in lk.holders]
            due += [(w.deadline, 1, r, w.owner) for r, lk in self.locks.items() for w in lk.queue]
            due = [d for d in due if d[0] <= self.now]
            if not due:
                return
            _, kind, r, o = min(due)
            lk = self.locks[r]
            if kind == 0:
                h = lk.holder(o)
                assert h is not None
                self._drop_holder(r, lk, h)
            else:
                pos = lk.waiter(o)
                assert pos is not None
                self._drop_waiter(r, lk, pos)

    # ---------------------------------------------------------------- rules

    def _grant(self, r: str, lk: MLock, o: str, mode: Mode, ttl: int) -> Outcome:
        self.token += 1
        lk.holders = [h for h in lk.holders if h.owner != o] + [MHolder(o, self.token, ttl, self.now + ttl)]
        lk.mode = mode
        return ("granted", o, self.token, mode)

    def _drop_holder(self, r: str, lk: MLock, h: MHolder) -> None:
        lk.holders.remove(h)
        if lk.queue and lk.queue[0].upgrade and lk.queue[0].owner == h.owner:
            self._drop_waiter(r, lk, 0)
        else:
            self._promote(r, lk)

    def _drop_waiter(self, r: str, lk: MLock, pos: int) -> None:
        w = lk.queue.pop(pos)
        self.events.append(("ended", r, w.owner, w.wait_id))
        self._promote(r, lk)

    def _promote(self, r: str, lk: MLock) -> None:
        while lk.queue:
            w = lk.queue[0]
            if w.upgrade:
                ok = len(lk.holders) == 1
            elif w.mode is X:
                ok = not lk.holders
            else:
                ok = not lk.holders or lk.mode is S
            if not ok:
                break
            lk.queue.pop(0)
            granted = self._grant(r, lk, w.owner, w.mode, w.ttl)
            self.events.append(("granted", r, w.owner, granted[2], w.wait_id))
        if not lk.holders and not lk.queue:
            del self.locks[r]

    def edges(self) -> dict[str, set[str]]:
        """The wait-for graph, owner -> owners it waits for."""
        graph: dict[str, set[str]] = {}
        for lk in self.locks.values():
            for i, w in enumerate(lk.queue):
                ahead = [] if w.upgrade else lk.queue[:i]
                out = graph.setdefault(w.owner, set())
                out |= {h.owner for h in lk.holders if h.owner != w.owner and clash(lk.mode, w.mode)}
                out |= {a.owner for a in ahead if a.owner != w.owner and clash(a.mode, w.mode)}
        return graph

    def reaches(self, start: str, goal: str) -> bool:
        graph, seen, todo = self.edges(), set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    def finish(self) -> None:
        """Drop the empty lock an operation may have created without using."""
        for r in [r for r, lk in self.locks.items() if not lk.holders and not lk.queue]:
            del self.locks[r]
