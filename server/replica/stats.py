"""Counters the replica keeps in plain attributes, for a metrics exporter to read.

Plain numbers rather than metric objects: the replica stays free of any metrics
library, and updating an int on the hot path costs next to nothing.  Counters only
grow; the fields marked "gauge" hold the latest observation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


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
    reads_failed: Counter[str] = field(default_factory=Counter)  # by error class name
    ticks: int = 0
    ticks_skipped: int = 0  # ticks dropped because the loop fell more than a tick behind
    last_tick_lag: float = 0.0  # gauge: seconds the latest tick fired after it was due
