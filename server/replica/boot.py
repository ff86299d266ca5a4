"""Rebuilding a node's Raft core from what its storage kept."""

from __future__ import annotations

from server.raft import Config, RaftCore, Rng
from server.storage.protocols import RaftStorage


class MissingSnapshotError(RuntimeError):
    """The stored log starts after a snapshot whose state this node cannot load."""


async def open_core(config: Config, storage: RaftStorage, rng: Rng) -> RaftCore:
    """The core as it was when the node last persisted a Ready.

    The state machine starts empty: the first Ready hands it every committed entry
    again, from index 1.  That needs the whole log, so a log that begins after a
    snapshot point is refused here -- this is where a snapshot store (a later issue)
    will supply the snapshot to restore the state machine from and hand to the core.
    """
    hard_state = await storage.load_hard_state()
    meta, entries = await storage.load()
    if meta.index:
        raise MissingSnapshotError(
            f"node {config.node_id}: its stored log starts after a snapshot at index {meta.index} "
            f"(term {meta.term}), and this version cannot restore state-machine snapshots: run it with "
            "the dsync version that wrote this data"
        )
    return RaftCore(config, rng, hard_state, None, entries)
