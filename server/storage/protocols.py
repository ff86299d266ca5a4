"""The narrow interfaces the replica driver persists through (one per concern, as in hashicorp/raft)."""

from __future__ import annotations

from typing import Protocol

from server.raft.types import Entry, HardState, Snapshot, SnapshotMeta


class StableStore(Protocol):
    """Term, vote and commit: must be durable before any message that depends on them is sent."""

    async def load_hard_state(self) -> HardState:
        """The last saved hard state, or `HardState()` on a fresh node."""
        ...

    async def save_hard_state(self, hs: HardState) -> None: ...


class LogStore(Protocol):
    """The Raft log after its start point (at or before the latest snapshot's index).

    Indices are contiguous: first_index() == meta.index + 1 and last_index() == meta.index
    when the log is empty (so last_index() is always the index of the newest entry known,
    stored or snapshotted).
    """

    async def load(self) -> tuple[SnapshotMeta, list[Entry]]:
        """Everything needed to rebuild the core at boot: the start point and the entries after it."""
        ...

    async def append(self, entries: list[Entry]) -> None:
        """Store consecutive `entries`, first dropping every stored entry with index >= entries[0].index.

        The drop is Raft truncating a conflicting suffix.  Entries at or below the start
        point are skipped (they are committed, so a snapshot already holds them); a gap
        after last_index() raises ValueError.
        """
        ...

    async def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi.

        Raises CompactedError if lo < first_index(), UnavailableError if hi > last_index() + 1.
        """
        ...

    async def first_index(self) -> int: ...

    async def last_index(self) -> int: ...

    async def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries <= meta.index and record `meta` as the new start point.

        Entries after meta.index survive only if the log holds meta.index with meta.term
        (Raft §7: otherwise they may conflict with the snapshot, so the whole log goes).
        A meta at or below the current start point is a no-op, so retries are safe.
        """
        ...


class SnapshotStore(Protocol):
    """The newest state-machine snapshot: what a restarted node restores before replaying the log.

    A snapshot is saved before the log is compacted, never after, so a crash between the
    two leaves a snapshot newer than the log's start point (as the catch-up entries a
    compaction keeps do), never a log that starts after every stored snapshot.
    """

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the stored snapshot by `snapshot`, atomically.  The driver saves them in
        increasing index order: it compacts only forwards."""
        ...

    async def load_snapshot(self) -> Snapshot | None:
        """The stored snapshot, or None if this node never saved one."""
        ...


class RaftStorage(LogStore, StableStore, SnapshotStore, Protocol):
    """What the driver holds for one node."""

    async def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        """Persist one Ready batch atomically in one round trip: both or neither survive a crash.

        `entries` follow the rules of `append`; if they are rejected nothing is saved.
        """
        ...

    async def close(self) -> None: ...
