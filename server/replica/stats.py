"""Counters the replica keeps in plain attributes, for a metrics exporter to read.

Plain numbers rather than metric objects: the replica stays free of any metrics
library, and updating an int on the hot path costs next to nothing.  Counters only
grow; the fields marked "gauge" hold the latest observation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds in seconds: from a fast Redis round trip (~0.2 ms) to a proposal that
# waited out a leader election (seconds).
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms count them.

    `counts[i]` counts observations <= `bounds[i]` and > the bound before it (not
    cumulative); the last slot counts those above every bound.  An exporter turns them
    into cumulative buckets at scrape time, so the hot path only bisects and adds.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram bounds must be distinct and ascending, got {bounds}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0  # the sum of every observation

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class ReplicaStats:
    readies: int = 0
    saves: int = 0  # storage round trips for Ready batches
    save_seconds: float = 0.0
    entries_saved: int = 0
    messages_sent: int = 0
    entries_applied: int = 0
    apply_seconds: float = 0.0  # time spent inside the state machine
    proposals_committed: int = 0  # local proposals answered with their apply result
    commit_seconds: float = 0.0  # propose() -> result, summed over committed proposals
    proposals_failed: Counter[str] = field(default_factory=Counter)  # by error class name
    reads_served: int = 0
    snapshots: int = 0  # snapshots this replica took and compacted its log to
    snapshot_seconds: float = 0.0  # taking, saving and compacting them
    snapshots_installed: int = 0  # snapshots received from a leader
    snapshots_sent: int = 0  # snapshots sent, as a leader, to followers its log no longer reaches
    reads_failed: Counter[str] = field(default_factory=Counter)  # by error class name
    ticks: int = 0
    ticks_skipped: int = 0  # ticks dropped because the loop fell more than a tick behind
    last_tick_lag: float = 0.0  # gauge: seconds the latest tick fired after it was due
    leader_changes: int = 0  # times this replica learned of a leader other than the last one it knew
    last_leader: str = ""  # gauge: the latest leader known ("" before the first), for leader_changes
    save_latency: Histogram = field(default_factory=Histogram)  # every storage save (the Redis round trip)
    append_latency: Histogram = field(default_factory=Histogram)  # the saves that appended entries to the log
    commit_latency: Histogram = field(default_factory=Histogram)  # propose() -> result of committed proposals

    def saw_leader(self, leader: str) -> None:
        """Count a change of leader; an unknown leader ("", an election) is not one yet."""
        if leader and leader != self.last_leader:
            self.leader_changes += 1
            self.last_leader = leader
