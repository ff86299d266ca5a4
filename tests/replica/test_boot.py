"""Rebuilding a core from storage: its log, its snapshot, and the log compaction that makes one."""

from __future__ import annotations

import random

import pytest

from tests.replica.kv_machine import KvStateMachine, encode_put
from server.raft import Config, Entry, HardState, Snapshot, SnapshotMeta
from server.replica import MissingSnapshotError, Replica, open_core
from server.transport.memory import MemoryNetwork
from server.storage.errors import CorruptLogError
from server.storage.memory import MemoryRaftStorage

from .cluster import eventually, make_cluster, memory_storage


async def test_a_core_reopens_with_the_term_vote_commit_and_log_it_saved() -> None:
    storage = MemoryRaftStorage()
    await storage.save(HardState(term=4, vote="n2", commit=2), [Entry(3, 1, b"a"), Entry(4, 2, b"b"), Entry(4, 3)])
    core = await open_core(Config("n1", ("n1", "n2", "n3")), storage, random.Random(1))
    status = core.status()
    assert (status["term"], status["vote"], status["commit"], status["applied"]) == (4, "n2", 2, 0)
    assert (status["first_index"], status["last_index"]) == (1, 3)


async def test_a_log_that_starts_after_every_stored_snapshot_is_refused_with_what_to_do() -> None:
    storage = MemoryRaftStorage()
    await storage.save(HardState(term=2, commit=5), [Entry(2, i) for i in range(1, 6)])
    await storage.compact(SnapshotMeta(index=3, term=2))
    with pytest.raises(MissingSnapshotError, match="starts after index 3.*holds none.*wipe this node's data"):
        await open_core(Config("n1", ("n1",)), storage, random.Random(1))


def _kv_snapshot(*keys: str) -> bytes:
    fsm = KvStateMachine()
    for n, key in enumerate(keys, start=1):
        fsm.apply(n, encode_put(key, b"v"))
    return fsm.snapshot()


@pytest.mark.parametrize("compacted", [True, False], ids=["compacted", "crashed-before-compacting"])
async def test_a_core_starts_from_its_snapshot_and_replays_only_the_log_after_it(compacted: bool) -> None:
    storage = MemoryRaftStorage()
    # The saved commit (1) predates the snapshot: commit-only moves are not saved.
    await storage.save(HardState(term=2, commit=1), [Entry(2, i, encode_put(f"k{i}", b"v")) for i in range(1, 6)])
    await storage.save_snapshot(Snapshot(SnapshotMeta(3, 2, ("n1",)), _kv_snapshot("k1", "k2", "k3")))
    if compacted:
        await storage.compact(SnapshotMeta(3, 2, ("n1",)))
    core = await open_core(Config("n1", ("n1",)), storage, random.Random(1))
    status = core.status()
    # Uncompacted, the log keeps the entries the snapshot covers, as catch-up entries do.
    first = 4 if compacted else 1
    assert (status["first_index"], status["last_index"], status["commit"], status["applied"]) == (first, 5, 3, 3)
    fsm = KvStateMachine()
    replica = Replica(core, storage, MemoryNetwork(1).transport("n1"), fsm)
    assert fsm.get("k3") is not None and fsm.get("k4") is None  # restored, nothing replayed yet
    await replica.start()
    try:
        await replica.wait_for(lambda: replica.applied_index >= 5, timeout=5)
        assert [fsm.get(f"k{i}") is not None for i in range(1, 6)] == [True] * 5
    finally:
        await replica.stop()


@pytest.mark.parametrize("stored", [4, 2], ids=["contradicting it", "short of it"])
async def test_a_log_without_the_snapshots_last_entry_is_dropped_at_boot_in_storage_too(stored: int) -> None:
    storage = MemoryRaftStorage()
    await storage.save(HardState(term=3, commit=1), [Entry(1, i) for i in range(1, stored + 1)])
    # Installed from a leader of term 3 whose entry 3 the log lacks; the crash came before
    # the log was replaced by it.
    meta = SnapshotMeta(3, 3, ("n1", "n2", "n3"))
    await storage.save_snapshot(Snapshot(meta, _kv_snapshot()))
    core = await open_core(Config("n1", ("n1", "n2", "n3")), storage, random.Random(1))
    assert (core.log.first_index, core.log.last_index, core.log.committed) == (4, 3, 3)
    assert await storage.load() == (meta, [])
    # What the node saves next follows the snapshot, and is there after the next restart.
    await storage.save(None, [Entry(3, 4)])
    again = await open_core(Config("n1", ("n1", "n2", "n3")), storage, random.Random(1))
    assert [(e.term, e.index) for e in again.log.entries] == [(3, 4)]


async def test_a_log_start_and_snapshot_at_one_index_in_different_terms_is_refused_as_damage() -> None:
    storage = MemoryRaftStorage()
    await storage.save(HardState(term=2, commit=3), [Entry(1, i) for i in range(1, 5)])
    await storage.compact(SnapshotMeta(3, 1))
    await storage.save_snapshot(Snapshot(SnapshotMeta(3, 2), _kv_snapshot()))
    with pytest.raises(CorruptLogError, match="starts at index 3 in term 1.*snapshot there is of term 2"):
        await open_core(Config("n1", ("n1",)), storage, random.Random(1))


async def test_a_lagging_follower_installs_the_leaders_snapshot_and_restarts_from_it() -> None:
    stores = memory_storage()
    async with make_cluster(storage=stores, snapshot_entries=8, snapshot_catchup_entries=0) as cluster:
        leader = await cluster.leader()
        lagging, third = cluster.others(leader.id)
        cluster.partition([leader.id, third.id], [lagging.id])
        for i in range(20):
            await leader.propose(encode_put(f"k{i}", b"v"))
        assert leader.stats.snapshots >= 2
        assert (await stores(leader.id).load_snapshot()) == leader._core.log.snapshot
        cluster.heal()
        await eventually(lambda: lagging.applied_index == leader.commit_index, "the follower caught up")
        assert lagging.stats.snapshots_installed >= 1 and leader.stats.snapshots_sent >= 1
        assert cluster.fsm(lagging.id).snapshot() == cluster.fsm(leader.id).snapshot()
        start, _ = await stores(lagging.id).load()
        assert start.index > 0  # its log now starts after the snapshot
        await cluster.crash(lagging.id)
        restarted = await cluster.start(lagging.id)
        assert restarted.applied_index >= start.index  # restored, not replayed from index 1
        await eventually(lambda: restarted.applied_index == leader.commit_index, "the restarted follower caught up")
        assert cluster.fsm(lagging.id).snapshot() == cluster.fsm(leader.id).snapshot()


async def test_a_follower_a_little_behind_catches_up_from_the_entries_the_leader_kept() -> None:
    async with make_cluster(snapshot_entries=8, snapshot_catchup_entries=30) as cluster:
        leader = await cluster.leader()
        lagging, third = cluster.others(leader.id)
        for i in range(20):
            await leader.propose(encode_put(f"early{i}", b"v"))
        await eventually(lambda: lagging.applied_index == leader.commit_index, "the follower caught up")
        behind = lagging.applied_index
        cluster.partition([leader.id, third.id], [lagging.id])
        for i in range(20):
            await leader.propose(encode_put(f"late{i}", b"v"))
        log = leader._core.log
        assert log.snapshot.meta.index > behind + 8, "the leader took a snapshot past the follower"
        assert log.first_index > 1, "and compacted its log"
        assert log.first_index <= behind + 1, "but kept the entries the follower lacks"
        cluster.heal()
        await eventually(lambda: lagging.applied_index == leader.commit_index, "the follower caught up again")
        assert lagging.stats.snapshots_installed == 0 and leader.stats.snapshots_sent == 0
        assert cluster.fsm(lagging.id).snapshot() == cluster.fsm(leader.id).snapshot()


async def test_every_replica_bounds_its_log_and_a_restart_restores_the_same_state() -> None:
    stores = memory_storage()
    async with make_cluster(storage=stores, snapshot_entries=10, snapshot_catchup_entries=3) as cluster:
        leader = await cluster.leader()
        for i in range(45):
            await leader.propose(encode_put(f"k{i % 7}", str(i).encode()))
        await cluster.converged()
        for replica in cluster.running():
            first = await stores(replica.id).first_index()
            assert first > replica.applied_index - 2 * 10, f"{replica.id} kept its log from {first}"
            assert replica._core.log.first_index == first
        before = {nid: cluster.fsm(nid).snapshot() for nid in cluster.ids}
        assert len(set(before.values())) == 1
        committed = leader.commit_index
        for nid in cluster.ids:
            await cluster.crash(nid)
        for nid in cluster.ids:
            await cluster.start(nid)
        await cluster.leader()
        # Restarted nodes know only their snapshots committed; the new leader's no-op
        # commits the rest of the log.
        await eventually(
            lambda: all(r.applied_index > committed for r in cluster.running()), "the new leader committed"
        )
        assert {nid: cluster.fsm(nid).snapshot() for nid in cluster.ids} == before
