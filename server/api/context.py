"""What a servicer is built from: the node's replica, its state machines, its event hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.api.events import EventHub
from server.fsm.router import DsyncStateMachine
from server.raft import NodeId, Role


class NodeReplica(Protocol):
    """The part of the replica servicers use (see server.replica.Replica)."""

    async def propose(self, command: bytes) -> object: ...

    async def read_barrier(self) -> int: ...

    @property
    def id(self) -> NodeId: ...

    @property
    def role(self) -> Role: ...

    @property
    def term(self) -> int: ...

    @property
    def leader_id(self) -> NodeId: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def applied_index(self) -> int: ...


@dataclass(frozen=True)
class ServiceContext:
    replica: NodeReplica
    machine: DsyncStateMachine
    hub: EventHub
