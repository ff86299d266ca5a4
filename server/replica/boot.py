"""Rebuilding a node's Raft core from what its storage kept."""

from __future__ import annotations

from server.raft import Config, HardState, RaftCore, Rng
from server.storage.errors import CorruptLogError
from server.storage.protocols import RaftStorage


class MissingSnapshotError(RuntimeError):
    """The stored log starts after a snapshot point, but no snapshot that far is stored."""


async def open_core(config: Config, storage: RaftStorage, rng: Rng) -> RaftCore:
    """The core as it was when the node last persisted a Ready.

    When a snapshot is stored, the core starts from it (the Replica restores its state
    machine from `core.log.snapshot`) and replays the entries after it.  The log may
    start before the snapshot: a node keeps the last entries its snapshot covers for
    followers a little behind, and a crash between saving a snapshot and compacting the
    log leaves them too.  By Raft §7 the log is kept only if it holds the snapshot's last
    entry; otherwise it starts afresh after the snapshot, in storage too.  The commit
    index is at least the snapshot's: a snapshot holds only committed entries, and a
    saved hard state may predate it (the driver does not save commit-only moves).
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
        at = snapshot.meta.index - start.index - 1
        held = start.term if at < 0 else entries[at].term if at < len(entries) else None
        if held != snapshot.meta.term:
            if at < 0:
                raise CorruptLogError(
                    f"node {config.node_id}: its stored log starts at index {start.index} in term {start.term}, "
                    f"but its snapshot there is of term {snapshot.meta.term}: the data is damaged; "
                    "wipe this node's data and let it catch up from the leader"
                )
            # A snapshot from the leader was saved, and the crash came before the log was
            # replaced by it: finish that, or the next entries would follow the old log.
            await storage.compact(snapshot.meta)
            start, entries = snapshot.meta, []
        last = start.index + len(entries)
        commit = min(max(hard_state.commit, snapshot.meta.index), last)
        hard_state = HardState(hard_state.term, hard_state.vote, commit)
    return RaftCore(config, rng, hard_state, snapshot, entries, start)
