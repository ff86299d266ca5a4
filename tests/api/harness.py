"""In-process service clusters: real replicas, state machines and grpc.aio servers on
127.0.0.1:0, an in-memory Raft network, and a leader clock — everything but processes.

    async with service_cluster(register=[add_lock_service]) as cluster:
        stub = LockServiceStub(cluster.channel("n1"))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from server.api.clock import run_clock
from server.api.context import ServiceContext
from server.api.events import EventHub
from server.fsm.base import Component
from server.fsm.router import DsyncStateMachine
from server.raft import NodeId
from tests.replica.cluster import Cluster, memory_storage

CLOCK_INTERVAL = 0.02  # seconds between the leader's clock entries in these tests
Register = Callable[[grpc.aio.Server, ServiceContext], str]
Components = Callable[[], dict[str, Component]]


@dataclass
class ServiceNode:
    machine: DsyncStateMachine
    hub: EventHub
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    clock: asyncio.Task[None]


@dataclass
class ServiceCluster:
    raft: Cluster
    components: Components
    register: list[Register]
    nodes: dict[NodeId, ServiceNode] = field(default_factory=dict)

    def channel(self, nid: NodeId) -> grpc.aio.Channel:
        return self.nodes[nid].channel

    def machine(self, nid: NodeId) -> DsyncStateMachine:
        return self.nodes[nid].machine

    async def start(self, nid: NodeId) -> None:
        """Boot `nid` from its storage: empty state machines, the log replayed into them."""
        machine = DsyncStateMachine(self.components())
        hub = EventHub()
        machine.emit = hub.publish
        replica = await self.raft.start(nid, fsm=machine)  # type: ignore[arg-type]
        server = grpc.aio.server()
        context = ServiceContext(replica, machine, hub)
        for register in self.register:
            register(server, context)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        clock = asyncio.create_task(run_clock(replica, CLOCK_INTERVAL), name=f"clock-{nid}")
        self.nodes[nid] = ServiceNode(machine, hub, server, channel, clock)

    async def crash(self, nid: NodeId) -> None:
        node = self.nodes.pop(nid)
        node.clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.clock
        await node.channel.close()
        await node.server.stop(None)
        await self.raft.crash(nid)

    async def close(self) -> None:
        for nid in list(self.nodes):
            await self.crash(nid)


@asynccontextmanager
async def service_cluster(
    register: list[Register], components: Components, size: int = 3, **options: object
) -> AsyncIterator[ServiceCluster]:
    """A started cluster of `size` nodes (n1, n2, ...) with a leader elected; closed on exit."""
    raft = Cluster([f"n{i + 1}" for i in range(size)], memory_storage(), **options)  # type: ignore[arg-type]
    cluster = ServiceCluster(raft, components, register)
    try:
        for nid in raft.ids:
            await cluster.start(nid)
        await raft.leader()
        yield cluster
    finally:
        await cluster.close()
        await raft.close()
