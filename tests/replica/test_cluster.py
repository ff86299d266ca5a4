"""Three replicas over a loopback network: elections, writes, reads, partitions, restarts."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.replica.kv_machine import encode_put
from server.raft import MsgType, Role
from server.replica import NoLeader, ProposalDropped, ReplicaError

from .cluster import TICK, Cluster, eventually, make_cluster


def put(key: str, value: bytes = b"v") -> bytes:
    return encode_put(key, value)


async def test_a_leader_is_elected_and_every_replica_follows_it() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        assert [r.role for r in cluster.others(leader.id)] == [Role.FOLLOWER, Role.FOLLOWER]
        assert {r.term for r in cluster.running()} == {leader.term}
        assert await cluster.replica("n1").wait_for_leader(timeout=1) == leader.id


async def test_proposals_through_any_replica_apply_on_all_with_the_same_results() -> None:
    async with make_cluster() as cluster:
        await cluster.leader()
        keys = [f"k{i}" for i in range(60)]
        results = await asyncio.gather(
            *(cluster.replica(cluster.ids[i % 3]).propose(put(key, key.encode())) for i, key in enumerate(keys))
        )
        # A PUT answers with the index that wrote it: distinct, and the same on every node.
        assert len(set(results)) == len(keys)
        await cluster.converged()
        for nid in cluster.ids:
            fsm = cluster.fsm(nid)
            assert [fsm.get(key) for key in keys] == [(key.encode(), v) for key, v in zip(keys, results)]
        assert len({cluster.fsm(nid).snapshot() for nid in cluster.ids}) == 1


async def test_a_follower_of_an_isolated_leader_fails_its_proposal_retryably_within_a_bound() -> None:
    # propose_timeout is far beyond the bound: the core's own forwarding timeout must answer.
    async with make_cluster(propose_timeout=60) as cluster:
        old = await cluster.leader()
        follower, other = cluster.others(old.id)
        cluster.partition([old.id], [follower.id, other.id])
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ReplicaError) as failed:
            await follower.propose(put("lost?"))
        assert loop.time() - began < 2.0  # 2 x election timeout is 0.2 s in ticks
        assert type(failed.value) is not ReplicaError  # a specific, documented kind
        # Retrying is what the error invites, and works once the majority has a leader.
        new = await cluster.leader(among=[follower.id, other.id])
        assert new.id != old.id
        version = await follower.propose(put("retried"))
        assert cluster.fsm(follower.id).get("retried") == (b"v", version)


async def test_a_replica_that_knows_no_leader_refuses_at_once() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        for replica in cluster.others(leader.id):
            await cluster.crash(replica.id)
        cluster.partition([leader.id])  # nobody left to hear from: it steps down (CheckQuorum)
        await eventually(lambda: leader.leader_id == "", "the lone leader stepped down")
        with pytest.raises(NoLeader) as refused:
            await leader.propose(put("k"))
        assert not refused.value.maybe_committed


async def test_an_isolated_old_leader_never_acknowledges_and_its_reads_fail() -> None:
    async with make_cluster(propose_timeout=30) as cluster:
        old = await cluster.leader()
        rest = [r.id for r in cluster.others(old.id)]
        cluster.partition([old.id], rest)
        stale_write = asyncio.create_task(old.propose(put("stale")))
        stale_read = asyncio.create_task(old.read_barrier())
        new = await cluster.leader(among=rest)
        fresh = await new.propose(put("fresh"))
        with pytest.raises(ReplicaError) as read_failed:
            await stale_read
        assert not read_failed.value.maybe_committed
        assert not stale_write.done()  # still unknown while it is cut off: not acknowledged
        cluster.heal()
        with pytest.raises(ProposalDropped) as write_failed:
            await stale_write  # the new leader's log overwrote it
        assert not write_failed.value.maybe_committed
        await cluster.converged()
        for nid in cluster.ids:
            assert cluster.fsm(nid).get("stale") is None
            assert cluster.fsm(nid).get("fresh") == (b"v", fresh)
        assert old.role is Role.FOLLOWER and old.leader_id == new.id


async def test_a_read_barrier_after_a_write_observes_it_on_every_replica() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        for n, writer in enumerate([*cluster.others(leader.id), leader]):
            key = f"seen-{n}"
            version = await writer.propose(put(key, b"x"))
            assert isinstance(version, int)
            for reader in cluster.running():
                index = await reader.read_barrier()
                assert index >= version
                assert cluster.fsm(reader.id).get(key) == (b"x", version), f"{reader.id} missed {key}"


async def test_concurrent_reads_share_a_barrier_and_each_gets_its_answer() -> None:
    async with make_cluster(propose_timeout=1.0) as cluster:
        leader = await cluster.leader()
        follower = cluster.others(leader.id)[0]
        version = await follower.propose(put("k", b"x"))
        assert isinstance(version, int)
        asked = cluster.record_sends(follower.id, MsgType.READ_INDEX)
        indexes = await asyncio.gather(*(follower.read_barrier() for _ in range(30)))
        assert all(index >= version for index in indexes)
        assert asked, "no barrier was asked for"
        assert len(asked) < 30, f"{len(asked)} barriers for 30 reads asked together"
        # A barrier that fails fails every read sharing it, and none hangs.
        cluster.partition([leader.id, cluster.others(leader.id)[1].id], [follower.id])
        outcomes = await asyncio.gather(*(follower.read_barrier() for _ in range(10)), return_exceptions=True)
        assert all(isinstance(outcome, ReplicaError) for outcome in outcomes), outcomes


async def _write(cluster: Cluster, prefix: str, count: int) -> dict[str, object]:
    leader = await cluster.leader()
    results = await asyncio.gather(*(leader.propose(put(f"{prefix}{i}")) for i in range(count)))
    return {f"{prefix}{i}": v for i, v in enumerate(results)}


async def test_a_crashed_follower_restarts_from_its_storage_and_catches_up() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        follower = cluster.others(leader.id)[0].id
        await _write(cluster, "before", 20)
        await cluster.crash(follower)
        written = await _write(cluster, "during", 20)
        restarted = await cluster.start(follower)
        await cluster.converged()
        assert restarted.applied_index == leader.commit_index
        assert cluster.fsm(follower).snapshot() == cluster.fsm(leader.id).snapshot()
        assert cluster.fsm(follower).get("during7") == (b"v", written["during7"])


async def test_a_crashed_leader_restarts_from_its_storage_and_nothing_committed_is_lost() -> None:
    async with make_cluster() as cluster:
        old = await cluster.leader()
        written = await _write(cluster, "k", 30)
        await cluster.crash(old.id)
        new = await cluster.leader()
        assert new.id != old.id
        written |= await _write(cluster, "after", 10)
        await cluster.start(old.id)
        await cluster.leader()
        await cluster.converged()
        for nid in cluster.ids:
            fsm = cluster.fsm(nid)
            assert {key: fsm.get(key) for key in written} == {key: (b"v", v) for key, v in written.items()}


async def test_leadership_moves_to_the_requested_voter() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        target = cluster.others(leader.id)[0]
        await leader.propose(put("k"))
        target.transfer_leader(target.id)  # asked through a follower: forwarded to the leader
        await eventually(lambda: target.role is Role.LEADER, f"{target.id} took over")
        assert (await cluster.leader()).id == target.id
        with pytest.raises(ValueError, match="voters"):
            leader.transfer_leader("n9")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_over_lossy_links_every_proposal_ends_and_none_reported_uncommitted_applies(seed: int) -> None:
    rng = random.Random(seed)
    async with make_cluster(seed=seed, propose_timeout=3) as cluster:
        leader = await cluster.leader()
        cluster.net.set_drop(0.05)
        cluster.net.set_delay(0.0, 0.004)
        calls: dict[str, asyncio.Task[object]] = {}
        for step in range(40):
            for n in range(5):
                key = f"k{step}.{n}"
                calls[key] = asyncio.create_task(cluster.replica(rng.choice(cluster.ids)).propose(put(key)))
            if step == 10:
                cluster.net.isolate(leader.id)
            elif step == 25:
                cluster.heal()
            await asyncio.sleep(TICK)
        await asyncio.wait(calls.values())
        cluster.net.set_drop(0.0)
        await cluster.leader()
        await cluster.converged()
        outcomes = {key: task.exception() or task.result() for key, task in calls.items()}
        assert all(isinstance(v, (int, ReplicaError)) for v in outcomes.values()), outcomes
        for key, outcome in outcomes.items():
            stored = {cluster.fsm(nid).get(key) for nid in cluster.ids}
            if isinstance(outcome, int):
                assert stored == {(b"v", outcome)}, key
            elif isinstance(outcome, ReplicaError) and not outcome.maybe_committed:
                assert stored == {None}, f"{key} failed with {outcome!r} yet was applied"
        assert any(isinstance(v, int) for v in outcomes.values())
        # Once the links are sound again, writes go through.
        assert isinstance(await cluster.replica(rng.choice(cluster.ids)).propose(put("after")), int)
