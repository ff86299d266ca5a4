"""Deadlock detection: the wait-for graph between owners.

An owner waiting for a resource waits for the holders its request conflicts with and
for every conflicting request queued ahead of it (FIFO).  The graph keeps only the
nearest of those (`Lock.blockers`): an exclusive request points at the group just ahead
of it, a shared one at the nearest exclusive request ahead, the head of the queue at
the conflicting holders.  The owners reachable from a request are the same as with an
edge to everyone it waits for, so a cycle exists in one graph exactly when it exists in
the other; but a queue of n requests has O(n) edges instead of O(n^2), and a search
through it costs O(n).

The machine keeps the graph acyclic by checking, before it queues a request, whether
any owner the request would wait for already waits -- directly or through others -- for
the requester; if so the request would close a cycle and is refused instead.  Only
queueing a request adds edges that can close a cycle (see `LockMachine._acquire` for why
an immediate upgrade cannot), so checking there is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.fsm.lock_state import Mode


@dataclass(frozen=True, slots=True)
class Edge:
    waiter: str
    resource: str
    blocker: str
    holds: bool  # the blocker holds the resource (else: it is queued ahead of the waiter)
    mode: Mode  # what the waiter asks for

    def __str__(self) -> str:
        how = "held by" if self.holds else "behind"
        return f"{self.waiter} waits for {self.resource} {how} {self.blocker}"


Edges = Callable[[str], list[Edge]]


def find_cycle(first: list[Edge], edges: Edges) -> list[Edge] | None:
    """The cycle that adding the edges `first` (all from one owner) would close, or None.

    Depth-first from each blocker in `first`, in order, never visiting an owner twice:
    an owner that cannot reach the requester from one blocker cannot from another.
    Deterministic, so every replica names the same cycle.
    """
    if not first:
        return None
    goal = first[0].waiter
    seen: set[str] = set()
    for start in first:
        if start.blocker in seen:
            continue
        seen.add(start.blocker)
        path = [start]
        stack = [iter(edges(start.blocker))]
        while stack:
            edge = next(stack[-1], None)
            if edge is None:
                stack.pop()
                path.pop()
                continue
            if edge.blocker == goal:
                return [*path, edge]
            if edge.blocker in seen:
                continue
            seen.add(edge.blocker)
            path.append(edge)
            stack.append(iter(edges(edge.blocker)))
    return None


def shorten(cycle: list[Edge]) -> list[Edge]:
    """The cycle told with each exclusive request's walk down a queue as one step.

    The graph steps through a queue a group at a time, so a cycle may pass hundreds of
    requests of one resource in a row.  An exclusive request waits for everyone ahead of
    it and for every holder, so from it straight to where the walk leaves the queue -- a
    holder, or a request that goes on in another resource -- is just as true ("a waits
    for r held by h").
    """
    shortened: list[Edge] = []
    i = 0
    while i < len(cycle):
        first = last = cycle[i]
        if first.mode is Mode.EXCLUSIVE:
            while not last.holds and i + 1 < len(cycle) and cycle[i + 1].resource == first.resource:
                i += 1
                last = cycle[i]
        shortened.append(Edge(first.waiter, first.resource, last.blocker, last.holds, first.mode))
        i += 1
    return shortened


def describe(cycle: list[Edge]) -> str:
    """'alice waits for r2 held by bob, bob waits for r1 held by alice'."""
    return ", ".join(str(edge) for edge in shorten(cycle))
