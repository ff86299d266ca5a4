"""The replica over the real Redis store: one embedded redis-server, one key prefix per node."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from tests.replica.kv_machine import encode_put
from server.raft import NodeId
from server.storage.embedded_redis import EmbeddedRedis
from server.storage.protocols import RaftStorage
from server.storage.redis_store import RedisRaftStorage

from .cluster import StorageFactory, make_cluster

_clusters = itertools.count()


def redis_storage(url: str) -> StorageFactory:
    """A fresh handle per boot, as a restarted process would open; the data stays in Redis."""
    cluster = f"replica{next(_clusters)}"

    def open_store(node: NodeId) -> RaftStorage:
        return RedisRaftStorage.from_url(url, cluster=cluster, node=node)

    return open_store


async def test_a_cluster_on_redis_replicates_and_a_restarted_node_catches_up(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "redis") as redis:
        async with make_cluster(storage=redis_storage(redis.url), tick_interval=0.02) as cluster:
            leader = await cluster.leader()
            follower = cluster.others(leader.id)[0]
            versions = await asyncio.gather(
                *(cluster.replica(cluster.ids[i % 3]).propose(encode_put(f"k{i}", b"v")) for i in range(30))
            )
            await cluster.crash(follower.id)
            late = await leader.propose(encode_put("late", b"v"))
            restarted = await cluster.start(follower.id)
            await restarted.wait_for_leader(timeout=5)  # until then its reads fail with NoLeader
            await restarted.read_barrier()
            fsm = cluster.fsm(follower.id)
            assert fsm.get("late") == (b"v", late)
            assert [fsm.get(f"k{i}") for i in range(30)] == [(b"v", v) for v in versions]
            await cluster.converged()
            assert len({cluster.fsm(nid).snapshot() for nid in cluster.ids}) == 1
