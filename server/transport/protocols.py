"""How the replica talks to its peers, and how their messages reach it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from server.raft.types import Message, NodeId

# Called with each batch of messages received from peers, in arrival order.  It must not
# block: the replica only queues them for its loop.
Inbox = Callable[[list[Message]], None]


class Transport(Protocol):
    """One-way, best-effort delivery of Raft messages (Raft tolerates loss and reordering).

    `send` never blocks and never raises for an unreachable peer: messages to a dead or
    slow peer are dropped once its queue is full, and the others are unaffected.
    A transport never delivers one message twice.
    """

    def send(self, messages: list[Message]) -> None: ...

    async def close(self) -> None: ...


class PeerDirectory(Protocol):
    """Where each peer's Raft service listens; fixed for the life of the cluster."""

    def address(self, peer: NodeId) -> str: ...
