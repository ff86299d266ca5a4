"""Real clusters for integration tests: node processes, private redis-servers, free ports."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from dsync.internal.v1 import kv_pb2, kv_pb2_grpc
from server.cluster import LocalCluster

TICK_MS = 50
ELECTION_TICKS = 10
# The longest randomized election timeout: the core draws from [E, 2E) ticks.
ELECTION_TIMEOUT_S = 2 * ELECTION_TICKS * TICK_MS / 1000


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; held together so they are distinct."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def make_cluster(tmp_path: Path, nodes: int = 3, **env: str) -> LocalCluster:
    ports = free_ports(3 * nodes)
    return LocalCluster(
        nodes,
        tmp_path / "cluster",
        ports[:nodes],
        ports[nodes : 2 * nodes],
        ports[2 * nodes :],
        extra_env={"TICK_MS": str(TICK_MS), "ELECTION_TICKS": str(ELECTION_TICKS), "LOG_LEVEL": "WARNING", **env},
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = make_cluster(tmp_path)
    await cluster.start()
    try:
        await cluster.wait_for_leader(timeout=30)
        yield cluster
    finally:
        await cluster.stop()


class Kv:
    """The internal KV service of every node, by node name."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._channels = {n.name: grpc.aio.insecure_channel(n.grpc_address) for n in cluster}
        self.stubs = {name: kv_pb2_grpc.KvServiceStub(ch) for name, ch in self._channels.items()}

    async def put(self, node: str, key: str, value: bytes) -> int:
        reply = await self.stubs[node].Put(kv_pb2.PutRequest(key=key, value=value), timeout=10)
        return reply.version

    async def get(self, node: str, key: str, linearizable: bool = True) -> bytes | None:
        reply = await self.stubs[node].Get(kv_pb2.GetRequest(key=key, linearizable=linearizable), timeout=10)
        return reply.value if reply.found else None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@pytest.fixture
async def kv(cluster: LocalCluster) -> AsyncIterator[Kv]:
    client = Kv(cluster)
    yield client
    await client.close()
