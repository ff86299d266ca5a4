"""What the gateway reads of the node's parts, as protocols.

The gateway never imports the replica, transport, storage or state machines: the
composition root (server/node.py) hands it the objects, and these protocols say which
of their members it relies on, so a change there that breaks an exporter fails
type-checking rather than a scrape.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from server.replica.stats import ReplicaStats


class ReplicaView(Protocol):
    """server.replica.Replica."""

    stats: ReplicaStats

    @property
    def id(self) -> str: ...

    @property
    def role(self) -> enum.Enum: ...

    @property
    def term(self) -> int: ...

    @property
    def leader_id(self) -> str: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def applied_index(self) -> int: ...

    def status(self) -> dict[str, object]: ...

    def follower_lag(self) -> Mapping[str, int]: ...


class PeerLinkView(Protocol):
    """One peer's sending side (server.transport.peer_link.PeerStats)."""

    @property
    def connected(self) -> bool: ...

    @property
    def last_sent(self) -> float | None: ...

    @property
    def sent(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def queued(self) -> int: ...


class ReceiveView(Protocol):
    """The receiving side of every peer stream (server.transport.peer_service.ReceiveStats)."""

    @property
    def batches(self) -> int: ...

    @property
    def messages(self) -> int: ...

    @property
    def malformed(self) -> int: ...

    @property
    def misaddressed(self) -> int: ...

    @property
    def strangers(self) -> int: ...

    @property
    def foreign_streams(self) -> int: ...

    @property
    def unauthenticated_streams(self) -> int: ...


class LockTotals(Protocol):
    """server.fsm.lock.LockMachine."""

    def totals(self) -> tuple[int, int, int]: ...


class QueueTotals(Protocol):
    """server.fsm.queue.QueueMachine."""

    redeliveries: int
    dead_lettered: int

    def totals(self) -> tuple[int, int, int]: ...


class CacheTotals(Protocol):
    """server.fsm.cache.CacheMachine."""

    evictions: int
    expirations: int

    def __len__(self) -> int: ...

    @property
    def bytes_used(self) -> int: ...
