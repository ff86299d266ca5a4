"""The asyncio driver of the Raft core: ticks, persists, sends, applies, answers proposals.

Depends on the core and on the *protocols* of storage, transport and state machine
only; `server.node` hands it the concrete adapters.
"""

from server.replica.boot import MissingSnapshotError, open_core
from server.replica.errors import (
    CommitUnknown,
    NoLeader,
    NotLeader,
    Overloaded,
    ProposalDropped,
    ReadTimeout,
    ReplicaError,
    Stopped,
)
from server.replica.replica import Replica
from server.replica.stats import ReplicaStats

__all__ = [
    "CommitUnknown",
    "MissingSnapshotError",
    "NoLeader",
    "NotLeader",
    "Overloaded",
    "ProposalDropped",
    "ReadTimeout",
    "Replica",
    "ReplicaError",
    "ReplicaStats",
    "Stopped",
    "open_core",
]
