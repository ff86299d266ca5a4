"""In-memory twin of the Redis store: same contract, no I/O, for tests and simulations.

A "restarted" node reuses the same object, exactly as a real node reuses its Redis.
"""

from __future__ import annotations

from server.raft.types import Entry, HardState, Snapshot, SnapshotMeta

from .log_bounds import check_range, compaction_drop, entries_to_store


class MemoryRaftStorage:
    def __init__(self) -> None:
        self._hard = HardState()
        self._start = SnapshotMeta()
        self._log: list[Entry] = []  # _log[i].index == _start.index + 1 + i
        self._snapshot: Snapshot | None = None

    async def load_hard_state(self) -> HardState:
        return self._hard

    async def save_hard_state(self, hs: HardState) -> None:
        self._hard = hs

    async def load(self) -> tuple[SnapshotMeta, list[Entry]]:
        return self._start, list(self._log)

    async def append(self, entries: list[Entry]) -> None:
        await self.save(None, entries)

    async def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        # Validate before touching anything, so a rejected batch saves nothing.
        fresh = entries_to_store(entries, self._start.index, self._last())
        if hard_state is not None:
            self._hard = hard_state
        if fresh:
            del self._log[fresh[0].index - self._start.index - 1 :]
            self._log.extend(fresh)

    async def entries(self, lo: int, hi: int) -> list[Entry]:
        check_range(lo, hi, self._start.index + 1, self._last())
        offset = self._start.index + 1
        return self._log[lo - offset : hi - offset]

    async def first_index(self) -> int:
        return self._start.index + 1

    async def last_index(self) -> int:
        return self._last()

    async def compact(self, meta: SnapshotMeta) -> None:
        if meta.index <= self._start.index:
            return
        at = meta.index - self._start.index - 1
        term_at_meta = self._log[at].term if at < len(self._log) else None
        drop = compaction_drop(meta, self._start, len(self._log), term_at_meta)
        del self._log[:drop]
        self._start = meta

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    async def load_snapshot(self) -> Snapshot | None:
        return self._snapshot

    async def close(self) -> None:
        """Nothing to release; the data outlives the handle, as Redis data would."""

    def _last(self) -> int:
        return self._start.index + len(self._log)
