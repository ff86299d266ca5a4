"""Rebuilding a core from storage, and the snapshot path that storage cannot yet rebuild from."""

from __future__ import annotations

import random

import pytest

from tests.replica.kv_machine import encode_put
from server.raft import Config, Entry, HardState, SnapshotMeta
from server.replica import MissingSnapshotError, open_core
from server.storage.memory import MemoryRaftStorage

from .cluster import eventually, make_cluster, memory_storage


async def test_a_core_reopens_with_the_term_vote_commit_and_log_it_saved() -> None:
    storage = MemoryRaftStorage()
    await storage.save(HardState(term=4, vote="n2", commit=2), [Entry(3, 1, b"a"), Entry(4, 2, b"b"), Entry(4, 3)])
    core = await open_core(Config("n1", ("n1", "n2", "n3")), storage, random.Random(1))
    status = core.status()
    assert (status["term"], status["vote"], status["commit"], status["applied"]) == (4, "n2", 2, 0)
    assert (status["first_index"], status["last_index"]) == (1, 3)


async def test_a_log_that_starts_after_a_snapshot_is_refused_with_what_to_do() -> None:
    storage = MemoryRaftStorage()
    await storage.save(HardState(term=2, commit=5), [Entry(2, i) for i in range(1, 6)])
    await storage.compact(SnapshotMeta(index=3, term=2))
    with pytest.raises(MissingSnapshotError, match="snapshot at index 3.*run it with"):
        await open_core(Config("n1", ("n1",)), storage, random.Random(1))


async def test_a_lagging_follower_installs_the_leaders_snapshot() -> None:
    stores = memory_storage()
    async with make_cluster(storage=stores) as cluster:
        leader = await cluster.leader()
        lagging, third = cluster.others(leader.id)
        cluster.partition([leader.id, third.id], [lagging.id])
        for i in range(20):
            await leader.propose(encode_put(f"k{i}", b"v"))
        # Nothing in the runtime compacts yet (snapshots are not stored): the test reaches
        # into the leader's core, between two Readies, to make it ship a snapshot.
        leader._core.compact(leader.applied_index, cluster.fsm(leader.id).snapshot())
        cluster.heal()
        await eventually(lambda: lagging.applied_index == leader.commit_index, "the follower caught up")
        assert cluster.fsm(lagging.id).snapshot() == cluster.fsm(leader.id).snapshot()
        start, _ = await stores(lagging.id).load()
        assert start.index > 0  # its log now starts after the snapshot
        await cluster.crash(lagging.id)
        with pytest.raises(MissingSnapshotError):
            await cluster.start(lagging.id)
