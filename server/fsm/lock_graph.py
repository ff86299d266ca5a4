"""Deadlock detection: the wait-for graph between owners.

An owner waiting for a resource has an edge to every owner it waits for there: the
holders its request conflicts with, and the conflicting requests queued ahead of it
(FIFO makes it wait for those too).  The machine keeps the graph acyclic by checking,
before it queues a request, whether any owner the request would wait for already
waits -- directly or through others -- for the requester; if so the request would close
a cycle and is refused instead.  Only queueing a request adds edges that can close a
cycle (see `LockMachine._acquire` for why an immediate upgrade cannot), so checking
there is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Edge:
    waiter: str
    resource: str
    blocker: str
    holds: bool  # the blocker holds the resource (else: it is queued ahead of the waiter)

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


def describe(cycle: list[Edge]) -> str:
    """'alice waits for r2 held by bob, bob waits for r1 held by alice'."""
    return ", ".join(str(edge) for edge in cycle)
