"""Rebuilding a node's Raft core from what its storage kept."""

from __future__ import annotations

from server.raft import Config, HardState, RaftCore, Rng
from server.storage.log_bounds import compaction_drop
from server.storage.protocols import RaftStorage


class MissingSnapshotError(RuntimeError):
    """The stored log starts after a snapshot point, but no snapshot that far is stored."""


async def open_core(config: Config, storage: RaftStorage, rng: Rng) -> RaftCore:
    """The core as it was when the node last persisted a Ready.

    When a snapshot is stored, the core starts from it (the Replica restores its state
    machine from `core.log.snapshot`) and the log entries it covers are skipped: a crash
    between saving a snapshot and compacting the log leaves both.  The commit index is
    at least the snapshot's: a snapshot holds only committed entries, and a saved hard
    state may predate it (the driver does not save commit-only moves).
    """
    hard_state = await storage.load_hard_state()
    start, entries = await storage.load()
    snapshot = await storage.load_snapshot()
    if snapshot is None or snapshot.meta.index < start.index:
        have = "none" if snapshot is None else f"one at index {snapshot.meta.index}"
        if start.index:
            raise MissingSnapshotError(
                f"node {config.node_id}: its stored log starts after index {start.index} (term {start.term}), "
                f"but the snapshot store holds {have}: the data was written by another dsync version or "
                "damaged; wipe this node's data and let it catch up from the leader"
            )
        snapshot = None
    if snapshot is not None:
        if snapshot.meta.index > start.index:
            # The entries the snapshot covers go, and by Raft §7 those after it too unless
            # the log holds its last entry: the rule the log store's compact applies.
            at = snapshot.meta.index - start.index - 1
            term_at_meta = entries[at].term if at < len(entries) else None
            entries = entries[compaction_drop(snapshot.meta, start, len(entries), term_at_meta) :]
        last = snapshot.meta.index + len(entries)
        commit = min(max(hard_state.commit, snapshot.meta.index), last)
        hard_state = HardState(hard_state.term, hard_state.vote, commit)
    return RaftCore(config, rng, hard_state, snapshot, entries)

