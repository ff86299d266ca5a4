"""The pure Raft core: standard library only, driven by inputs, answering with Ready batches."""

from server.raft.core import RaftCore, Rng
from server.raft.types import (
    DEFINITE_FAILURES,
    Config,
    Entry,
    EntryKind,
    FailReason,
    HardState,
    Message,
    MsgType,
    NodeId,
    ProposalOutcome,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "DEFINITE_FAILURES",
    "Config",
    "Entry",
    "EntryKind",
    "FailReason",
    "HardState",
    "Message",
    "MsgType",
    "NodeId",
    "ProposalOutcome",
    "RaftCore",
    "Ready",
    "ReadState",
    "Rng",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
]
