"""Real clusters for integration tests: node processes, private redis-servers, free ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from google.protobuf import struct_pb2

from dsync.v1 import cache_pb2, cache_pb2_grpc, common_pb2
from server.cluster import LocalCluster, free_ports

TICK_MS = 50
ELECTION_TICKS = 10
# The longest randomized election timeout: the core draws from [E, 2E) ticks.
ELECTION_TIMEOUT_S = 2 * ELECTION_TICKS * TICK_MS / 1000
POLL_S = 0.05

T = TypeVar("T")


async def poll(probe: Callable[[], Awaitable[T]], done: Callable[[T], object], what: str, timeout: float) -> T:
    """Await `probe()` every POLL_S until `done(result)`; return that result.

    Fails after `timeout` seconds naming `what` and the last result, which is usually the
    clue to why it never came.
    """
    deadline = time.monotonic() + timeout
    while not done(result := await probe()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}; last seen: {result!r}"
        await asyncio.sleep(POLL_S)
    return result


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
    """Every node's CacheService, by node name: writes and reads to prove the runtime."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._channels = {n.name: grpc.aio.insecure_channel(n.grpc_address) for n in cluster}
        self.stubs = {name: cache_pb2_grpc.CacheServiceStub(ch) for name, ch in self._channels.items()}

    async def put(self, node: str, key: str, value: bytes) -> int:
        request = cache_pb2.PutRequest(key=key, value=struct_pb2.Value(string_value=value.decode()))
        reply = await self.stubs[node].Put(request, timeout=10)
        return reply.version

    async def get(self, node: str, key: str, linearizable: bool = True) -> bytes | None:
        consistency = common_pb2.CONSISTENCY_LINEARIZABLE if linearizable else common_pb2.CONSISTENCY_LOCAL
        reply = await self.stubs[node].Get(cache_pb2.GetRequest(key=key, consistency=consistency), timeout=10)
        return reply.value.string_value.encode() if reply.found else None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@pytest.fixture
async def kv(cluster: LocalCluster) -> AsyncIterator[Kv]:
    client = Kv(cluster)
    yield client
    await client.close()
