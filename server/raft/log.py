"""The in-memory view of one node's Raft log.

The core owns its log in memory; the driver keeps a durable copy from what each
Ready hands it and rebuilds the core from that copy at boot.

The log starts after `start`, at or before the latest snapshot: a node that compacts
keeps some entries its snapshot covers, so that, as leader, it sends a follower a
little behind entries rather than the whole snapshot (etcd's snapshot catch-up entries).

Invariants (checked by the simulator):
    start.index <= snapshot.index <= applied <= committed <= last_index
    stable <= last_index   (entries above `stable` have not been handed out to persist)
    entries[i].index == start.index + 1 + i
"""

from __future__ import annotations

from server.raft.types import Entry, Snapshot, SnapshotMeta


class RaftLog:
    __slots__ = ("start", "snapshot", "entries", "committed", "applied", "stable", "pending_snapshot")

    def __init__(
        self, snapshot: Snapshot, entries: list[Entry], committed: int, start: SnapshotMeta | None = None
    ) -> None:
        """`start`: the entry before `entries`; the snapshot's by default."""
        self.start = start = snapshot.meta if start is None else start
        first = start.index + 1
        for offset, entry in enumerate(entries):
            if entry.index != first + offset:
                raise ValueError(f"log entries are not contiguous after index {first - 1}")
        self.snapshot = snapshot
        self.entries = list(entries)
        last = start.index + len(entries)
        if self.term(snapshot.meta.index) != snapshot.meta.term:
            raise ValueError(f"the snapshot at index {snapshot.meta.index} is not in the log ({start.index}, {last}]")
        if not snapshot.meta.index <= committed <= last:
            raise ValueError(f"commit {committed} outside the log [{snapshot.meta.index}, {last}]")
        self.committed = committed
        # The state machine starts from the snapshot; entries after it are replayed.
        self.applied = snapshot.meta.index
        self.stable = last
        # A snapshot received from the leader that the driver has not yet persisted.
        self.pending_snapshot: Snapshot | None = None

    @property
    def first_index(self) -> int:
        return self.start.index + 1

    @property
    def last_index(self) -> int:
        return self.start.index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.start.term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when it is compacted away or absent."""
        base = self.start.index
        if index == base:
            return self.start.term
        pos = index - base - 1
        if 0 <= pos < len(self.entries):
            return self.entries[pos].term
        return None

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a candidate's log at least as up to date as ours?"""
        mine = self.last_term
        return last_term > mine or (last_term == mine and last_index >= self.last_index)

    def slice(self, lo: int, max_count: int, max_bytes: int) -> tuple[list[Entry], int]:
        """Entries from `lo` and their data size: at most `max_count`, about `max_bytes`.

        Never fewer than one entry when any exist, so one huge entry still moves.
        """
        start = lo - self.start.index - 1
        chunk = self.entries[start : start + max_count]
        size = 0
        for n, entry in enumerate(chunk):
            size += len(entry.data)
            if size > max_bytes and n > 0:
                return chunk[:n], size - len(entry.data)
        return chunk, size

    def append(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    def try_append(self, prev_index: int, prev_term: int, entries: list[Entry]) -> int | None:
        """AppendEntries receiver rules 2-4: the new last matching index, or None on mismatch."""
        if not self.matches(prev_index, prev_term):
            return None
        base = self.start.index
        # Skip entries we already hold; truncate at the first conflicting one.
        for n, entry in enumerate(entries):
            pos = entry.index - base - 1
            if pos < 0:
                continue  # compacted away, hence committed and equal
            if pos >= len(self.entries):
                self.entries.extend(entries[n:])
                break
            if self.entries[pos].term != entry.term:
                if entry.index <= self.committed:
                    raise AssertionError(f"leader overwrites committed entry {entry.index}")
                del self.entries[pos:]
                self.stable = min(self.stable, entry.index - 1)
                self.entries.extend(entries[n:])
                break
        return prev_index + len(entries)

    def conflict_hint(self, prev_index: int) -> tuple[int, int]:
        """Fast back-off hint (thesis §5.3): (conflict_index, conflict_term) for a mismatch."""
        if prev_index > self.last_index:
            return self.last_index + 1, 0
        term = self.term(prev_index)
        if term is None:
            return self.first_index, 0
        index = prev_index
        while index - 1 >= self.first_index and self.term(index - 1) == term:
            index -= 1
        return index, term

    def last_index_of_term(self, term: int, upto: int) -> int | None:
        """Highest index <= upto whose entry has `term`, searching back while terms are >= term."""
        index = min(upto, self.last_index)
        while index >= self.first_index:
            t = self.entries[index - self.start.index - 1].term
            if t == term:
                return index
            if t < term:
                return None
            index -= 1
        return None

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index:
                raise AssertionError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index
            return True
        return False

    def unstable(self) -> list[Entry]:
        start = self.stable - self.start.index
        return self.entries[max(start, 0) :]

    def to_apply(self, max_count: int) -> list[Entry]:
        lo = self.applied - self.start.index
        hi = self.committed - self.start.index
        return self.entries[lo : min(hi, lo + max_count)]

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader.

        The driver restores the state machine from it before applying anything else,
        so `applied` moves to the snapshot at once.
        """
        self.start = snapshot.meta
        self.snapshot = snapshot
        self.entries = []
        self.committed = snapshot.meta.index
        self.applied = snapshot.meta.index
        self.stable = snapshot.meta.index
        self.pending_snapshot = snapshot

    def compact(self, snapshot: Snapshot, retain: int = 0) -> None:
        """Take a snapshot the state machine made at an applied index, and drop the entries
        it covers but the last `retain` of them."""
        index = snapshot.meta.index
        if index <= self.snapshot.meta.index:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} is applied")
        if self.term(index) != snapshot.meta.term:
            raise ValueError(f"snapshot term {snapshot.meta.term} differs from the log at {index}")
        if retain < 0:
            raise ValueError(f"retain must not be negative, got {retain}")
        self.snapshot = snapshot
        new_start = index - retain
        if new_start > self.start.index:
            drop = new_start - self.start.index
            self.start = self.meta_at(new_start, snapshot.meta.voters)
            del self.entries[:drop]
            self.stable = max(self.stable, new_start)  # the snapshot holds what was dropped

    def meta_at(self, index: int, voters: tuple[str, ...]) -> SnapshotMeta:
        term = self.term(index)
        if term is None:
            raise ValueError(f"no entry at index {index}")
        return SnapshotMeta(index=index, term=term, voters=voters)
