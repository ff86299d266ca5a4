"""Replica clusters in one event loop: build, partition, crash and restart from storage.

Tests wait on observed conditions (`eventually`, `Cluster.leader`) with deadlines; none
sleeps for a fixed time hoping something happened meanwhile.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from tests.replica.kv_machine import KvStateMachine
from server.raft import Config, Message, MsgType, NodeId, Role
from server.replica import Replica, open_core
from server.storage.memory import MemoryRaftStorage
from server.storage.protocols import RaftStorage
from server.transport.memory import MemoryNetwork, MemoryTransport

TICK = 0.01  # seconds per Raft tick in these tests: an election takes 0.1-0.2 s
DEADLINE = 10.0  # generous bound for conditions that normally hold within a second

StorageFactory = Callable[[NodeId], RaftStorage]


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(TICK / 2)


def memory_storage() -> StorageFactory:
    """One store per node that outlives restarts, as a node's Redis would."""
    stores: dict[NodeId, MemoryRaftStorage] = {}
    return lambda node: stores.setdefault(node, MemoryRaftStorage())


@dataclass
class Node:
    id: NodeId
    storage: RaftStorage | None = None
    transport: MemoryTransport | None = None
    fsm: KvStateMachine | None = None
    replica: Replica | None = None


class Cluster:
    def __init__(
        self,
        ids: list[NodeId],
        storage: StorageFactory,
        *,
        seed: int = 1,
        election_ticks: int = 10,
        **replica_options: Any,
    ) -> None:
        self.ids = ids
        self.net = MemoryNetwork(seed)
        self._storage = storage
        self._rng = random.Random(seed)
        self._election_ticks = election_ticks
        self._options: dict[str, Any] = {"tick_interval": TICK, **replica_options}
        self.nodes = {nid: Node(nid) for nid in ids}

    def config(self, nid: NodeId) -> Config:
        return Config(node_id=nid, voters=tuple(self.ids), election_ticks=self._election_ticks)

    async def start(self, nid: NodeId, fsm: KvStateMachine | None = None, **options: Any) -> Replica:
        """Boot `nid` from its storage with an empty state machine, as a restarted process would."""
        node = self.nodes[nid]
        assert node.replica is None, f"{nid} is already running"
        node.storage = self._storage(nid)
        core = await open_core(self.config(nid), node.storage, random.Random(self._rng.getrandbits(64)))
        node.fsm = fsm if fsm is not None else KvStateMachine()
        node.transport = self.net.transport(nid)
        node.replica = Replica(core, node.storage, node.transport, node.fsm, **{**self._options, **options})
        self.net.attach(nid, node.replica.inbox)
        await node.replica.start()
        return node.replica

    async def crash(self, nid: NodeId) -> None:
        """Stop `nid` abruptly; its storage keeps whatever it had saved."""
        node = self.nodes[nid]
        assert node.replica and node.storage and node.transport, f"{nid} is not running"
        self.net.detach(nid)
        await node.replica.stop()
        await node.transport.close()
        await node.storage.close()
        node.replica = None

    def replica(self, nid: NodeId) -> Replica:
        replica = self.nodes[nid].replica
        assert replica is not None, f"{nid} is down"
        return replica

    def fsm(self, nid: NodeId) -> KvStateMachine:
        fsm = self.nodes[nid].fsm
        assert fsm is not None, f"{nid} never started"
        return fsm

    def running(self) -> list[Replica]:
        return [node.replica for node in self.nodes.values() if node.replica is not None]

    def others(self, nid: NodeId) -> list[Replica]:
        return [r for r in self.running() if r.id != nid]

    async def leader(self, among: list[NodeId] | None = None, timeout: float = DEADLINE) -> Replica:
        """The leader once every running replica in `among` (default: all) follows it."""
        group = [self.replica(nid) for nid in among] if among else self.running()
        found: list[Replica] = []

        def settled() -> bool:
            leaders = [r for r in group if r.role is Role.LEADER]
            if len(leaders) != 1 or any(r.leader_id != leaders[0].id for r in group):
                return False
            found[:] = leaders
            return True

        await eventually(settled, f"one leader followed by all of {[r.id for r in group]}", timeout)
        return found[0]

    async def converged(self, timeout: float = DEADLINE) -> None:
        """Every running replica has applied everything the leader has committed."""

        def done() -> bool:
            replicas = self.running()
            commit = max(r.commit_index for r in replicas)
            return all(r.applied_index == commit for r in replicas)

        await eventually(done, "all replicas applied the same prefix", timeout)

    def partition(self, *groups: list[NodeId]) -> None:
        """Only nodes in one group reach each other (nodes named in none form one more group)."""
        self.net.partition(*groups)

    def heal(self) -> None:
        self.net.heal()

    def record_sends(self, nid: NodeId, kind: MsgType) -> list[Message]:
        """Messages of `kind` that `nid` sends from now on (until it restarts)."""
        transport = self.nodes[nid].transport
        assert transport is not None, f"{nid} is down"
        sent: list[Message] = []
        send = transport.send

        def recording(messages: list[Message]) -> None:
            sent.extend(m for m in messages if m.type is kind)
            send(messages)

        transport.send = recording  # type: ignore[method-assign]
        return sent

    async def close(self) -> None:
        for nid, node in self.nodes.items():
            if node.replica is not None:
                await self.crash(nid)


@asynccontextmanager
async def make_cluster(
    size: int = 3, storage: StorageFactory | None = None, **options: Any
) -> AsyncIterator[Cluster]:
    """A started cluster of `size` replicas (n1, n2, ...), stopped on exit."""
    cluster = Cluster([f"n{i + 1}" for i in range(size)], storage or memory_storage(), **options)
    try:
        for nid in cluster.ids:
            await cluster.start(nid)
        yield cluster
    finally:
        await cluster.close()
