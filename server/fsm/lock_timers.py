"""Lease expiries and wait deadlines in time order, so that moving time costs
O(due · log n) rather than a scan of every lock.

Renewing a lease or ending a wait leaves its old entry in the heap: it goes stale and
the machine skips it when it comes due (it no longer matches the state).  Stale entries
are dropped in bulk once they outnumber the live ones, so a client renewing in a loop
cannot grow the heap without bound.

Due entries come out in (time, kind, resource, owner) order, which depends on the state
alone and not on the heap's history: a machine restored from a snapshot -- whose heap
holds only live entries -- expires exactly what the original expires, in the same order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

# At the same instant a lease ends before a wait does: the waiter gets the lock rather
# than a timeout.
LEASE = 0
WAIT = 1

Timer = tuple[int, int, str, str]  # (due_ms, kind, resource, owner)

_MIN_REBUILD = 1024


class Timers:
    def __init__(self, live: Callable[[], list[Timer]]) -> None:
        """`live` lists the entries the state still needs: the rebuild keeps only those."""
        self._live = live
        self._heap: list[Timer] = []
        self._rebuild_at = _MIN_REBUILD

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, due_ms: int, kind: int, resource: str, owner: str) -> None:
        heapq.heappush(self._heap, (due_ms, kind, resource, owner))
        if len(self._heap) > self._rebuild_at:
            self.rebuild()

    def rebuild(self) -> None:
        """Keep only the live entries (after a restore, or once stale ones pile up)."""
        self._heap = self._live()
        heapq.heapify(self._heap)
        self._rebuild_at = max(_MIN_REBUILD, 2 * len(self._heap))

    def adopt(self, other: Timers) -> None:
        """Take `other`'s entries (a restored twin's); this one keeps its own view of the state."""
        self._heap, self._rebuild_at = other._heap, other._rebuild_at

    def due(self, now_ms: int) -> Iterator[Timer]:
        """Pop the entries due at or before `now_ms`, earliest first; entries added while
        iterating are seen if they are due too."""
        while self._heap and self._heap[0][0] <= now_ms:  # not a local: add() may rebuild
            yield heapq.heappop(self._heap)
