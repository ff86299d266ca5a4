"""The driver's own duties: back-pressure, batching, stopping, fail-stop, chunked apply, ticks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from tests.replica.kv_machine import KvStateMachine, encode_put
from server.raft import Entry, HardState, MsgType, NodeId
from server.replica import Overloaded, Stopped
from server.replica import replica as replica_module
from server.storage.memory import MemoryRaftStorage

from .cluster import DEADLINE, TICK, StorageFactory, eventually, make_cluster


def put(key: str) -> bytes:
    return encode_put(key, b"v")


class GatedStorage:
    """The in-memory store, whose saves can be held (a stalled disk) or made to fail."""

    def __init__(self) -> None:
        self.inner = MemoryRaftStorage()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held: list[Entry] = []  # entries of the save being held, once one is
        self.fault: Exception | None = None

    async def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        if self.fault is not None:
            raise self.fault
        if not self.gate.is_set():
            self.held = entries
            await self.gate.wait()
        await self.inner.save(hard_state, entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def gated(store: GatedStorage) -> StorageFactory:
    return lambda node: store


async def test_proposals_beyond_max_pending_are_refused_at_once() -> None:
    async with make_cluster(1, max_pending=5) as cluster:
        replica = await cluster.leader()
        outcomes = await asyncio.gather(*(replica.propose(put(f"k{i}")) for i in range(6)), return_exceptions=True)
        assert all(isinstance(v, int) for v in outcomes[:5])
        assert isinstance(outcomes[5], Overloaded) and not outcomes[5].maybe_committed
        assert isinstance(await replica.propose(put("room again")), int)
        assert replica.stats.proposals_failed == {"Overloaded": 1}


async def test_proposals_are_refused_while_applying_lags_committing() -> None:
    async with make_cluster(1) as cluster:
        replica = await cluster.leader()
        await asyncio.gather(*(replica.propose(put(f"k{i}")) for i in range(50)))
        await cluster.crash("n1")
        # Rebooted, it knows 51 committed entries and has applied none yet.
        replica = await cluster.start("n1", max_apply_lag=10)
        with pytest.raises(Overloaded, match="behind in applying"):
            await replica.propose(put("too soon"))
        await cluster.leader()
        await eventually(lambda: replica.applied_index >= 51, "the replay finished")
        assert isinstance(await replica.propose(put("now")), int)


async def test_proposals_arriving_together_share_one_save() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        saves, saved = leader.stats.saves, leader.stats.entries_saved
        results = await asyncio.gather(*(leader.propose(put(f"k{i}")) for i in range(200)))
        assert len(set(results)) == 200
        assert leader.stats.entries_saved - saved == 200
        # One save for the entries, a few more for commit-index updates: not 200.
        assert leader.stats.saves - saves <= 5


async def trickle(count: int, call: Callable[[int], Awaitable[object]]) -> list[object]:
    """`count` calls one loop turn apart, as requests reach a node one RPC at a time; the
    first is still out when the others come, so a follower forwarding each turn alone
    would send one message per call."""
    calls = []
    for i in range(count):
        calls.append(asyncio.ensure_future(call(i)))
        await asyncio.sleep(0)
    return await asyncio.gather(*calls)


@pytest.fixture
def patient_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch wait far longer than a loop turn even on a loaded machine, so that how much
    joins a batch depends on the rule, not on how fast this machine runs the loop."""
    monkeypatch.setattr(replica_module, "BATCH_WAIT", 0.05)


async def test_a_lone_write_on_an_idle_cluster_is_not_held_for_company(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch wait longer than the deadline: a write that waited for it would not commit in time.
    monkeypatch.setattr(replica_module, "BATCH_WAIT", 3 * DEADLINE)
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        follower = cluster.others(leader.id)[0]
        for replica in (leader, follower):
            await cluster.converged()
            async with asyncio.timeout(DEADLINE):
                assert isinstance(await replica.propose(put(f"alone at {replica.id}")), int)


@pytest.mark.usefixtures("patient_batching")
async def test_a_leader_gathers_proposals_trickling_in_while_an_append_round_is_out() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        await cluster.converged()
        saves = leader.stats.saves
        results = await trickle(40, lambda i: leader.propose(put(f"k{i}")))
        assert len(set(results)) == 40
        assert leader.stats.saves - saves <= 10, f"40 proposals saved in {leader.stats.saves - saves} writes"


@pytest.mark.usefixtures("patient_batching")
async def test_a_follower_forwards_proposals_trickling_in_together_in_few_messages() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        follower = cluster.others(leader.id)[0]
        forwarded = cluster.record_sends(follower.id, MsgType.PROPOSE)
        results = await trickle(40, lambda i: follower.propose(put(f"k{i}")))
        assert len(set(results)) == 40 and sum(len(m.entries) for m in forwarded) == 40
        assert len(forwarded) <= 10, f"40 proposals forwarded in {len(forwarded)} messages"


@pytest.mark.usefixtures("patient_batching")
async def test_a_follower_asks_one_barrier_for_reads_trickling_in_together() -> None:
    async with make_cluster() as cluster:
        leader = await cluster.leader()
        follower = cluster.others(leader.id)[0]
        index = await follower.propose(put("k"))
        assert isinstance(index, int)
        asked = cluster.record_sends(follower.id, MsgType.READ_INDEX)
        indexes = await trickle(40, lambda i: follower.read_barrier())
        assert all(isinstance(i, int) and i >= index for i in indexes), indexes
        assert len(asked) <= 10, f"40 reads asked {len(asked)} barriers of the leader"


async def test_stop_is_prompt_and_fails_every_waiter_with_a_retryable_error() -> None:
    store = GatedStorage()
    async with make_cluster(1, storage=gated(store)) as cluster:
        replica = await cluster.leader()
        await cluster.converged()
        store.gate.clear()
        write = asyncio.create_task(replica.propose(put("k")))
        await eventually(lambda: len(store.held) == 1, "the proposal's save is stuck on the disk")
        read = asyncio.create_task(replica.read_barrier())
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await replica.stop()
        assert loop.time() - began < 0.5
        with pytest.raises(Stopped) as write_failed:
            await write
        assert write_failed.value.maybe_committed  # it reached the log: it may yet commit
        with pytest.raises(Stopped) as read_failed:
            await read
        assert not read_failed.value.maybe_committed
        with pytest.raises(Stopped, match="another node"):
            await replica.propose(put("after stop"))
        await replica.join()  # a requested stop is not a fault


async def test_a_storage_fault_stops_the_replica_and_fails_its_waiters() -> None:
    store = GatedStorage()
    async with make_cluster(1, storage=gated(store)) as cluster:
        replica = await cluster.leader()
        store.fault = OSError("disk on fire")
        with pytest.raises(Stopped, match="restart the node"):
            await replica.propose(put("k"))
        with pytest.raises(OSError, match="disk on fire"):
            await replica.join()
        assert "disk on fire" in str(replica.status()["stopped"])


async def test_entries_already_on_disk_are_answered_without_waiting_for_the_next_save() -> None:
    stores: dict[NodeId, GatedStorage] = {}
    async with make_cluster(storage=lambda nid: stores.setdefault(nid, GatedStorage())) as cluster:
        leader = await cluster.leader()
        await leader.propose(put("warm"))
        disk = stores[leader.id]
        followers = cluster.others(leader.id)
        saves = {r.id: r.stats.saves for r in followers}
        disk.gate.clear()  # the leader's disk stalls
        first = asyncio.ensure_future(leader.propose(put("k1")))
        await eventually(lambda: bool(disk.held), "the leader's save of k1 is held")
        last = leader.status()["last_index"]
        await eventually(
            lambda: all(r.stats.saves > saves[r.id] and r.status()["last_index"] == last for r in followers),
            "the followers saved k1",
        )
        for _ in range(5):
            await asyncio.sleep(0)  # their answers reach the leader's inbox
        disk.held = []
        disk.gate.set()  # k1's save completes; the next one stalls again
        disk.gate.clear()
        # Queued before the leader's next turn, which also steps the followers' answers:
        # k1 commits in the very Ready that brings k2 to save.
        second = asyncio.ensure_future(leader.propose(put("k2")))
        done, _ = await asyncio.wait([first], timeout=2)
        assert done, "k1, committed and on disk, waited for k2's save"
        assert not second.done()
        assert [e.data.endswith(put("k2")) for e in disk.held] == [True]  # k2's save is the held one
        disk.gate.set()
        await second


@pytest.mark.parametrize("own_first", [True, False])
async def test_a_leader_logs_its_own_and_forwarded_proposals_in_the_order_they_arrived(own_first: bool) -> None:
    """The clock's rule (server/api/clock.py): a reading the leader proposed sits, in the log,
    after every command that reached the leader before it and before every command that
    reached it after -- even when both wait for the same turn of a stalled loop."""
    stores: dict[NodeId, GatedStorage] = {}
    async with make_cluster(storage=lambda nid: stores.setdefault(nid, GatedStorage())) as cluster:
        leader = await cluster.leader()
        follower = cluster.others(leader.id)[0]
        await follower.propose(put("warm"))
        disk = stores[leader.id]
        disk.gate.clear()  # the leader's loop stalls in a save
        busy = asyncio.ensure_future(leader.propose(put("k0")))
        await eventually(lambda: bool(disk.held), "the leader's save of k0 is held")
        forwards = cluster.record_sends(follower.id, MsgType.PROPOSE)

        async def forward() -> asyncio.Future[object]:
            sent = asyncio.ensure_future(follower.propose(put("forwarded")))
            await eventually(lambda: bool(forwards), "the follower forwarded its proposal")
            for _ in range(5):
                await asyncio.sleep(0)  # it reaches the leader's inbox
            return sent

        if own_first:
            own = asyncio.ensure_future(leader.propose(put("own")))
            await asyncio.sleep(0)  # queued on the leader now
            forwarded = await forward()
        else:
            forwarded = await forward()
            own = asyncio.ensure_future(leader.propose(put("own")))
            await asyncio.sleep(0)
        disk.gate.set()
        await busy
        indexes = (await own, await forwarded) if own_first else (await forwarded, await own)
        assert indexes[0] < indexes[1], "the command that arrived second was logged first"


@asynccontextmanager
async def loop_lags() -> AsyncIterator[list[float]]:
    """How late each 10 ms sleep woke while the block ran: the event loop's stalls."""
    lags: list[float] = []

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - began - 0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        yield lags
    finally:
        watcher.cancel()


class SlowSnapshots(KvStateMachine):
    """Snapshots that take a while, as serialising a large state does."""

    def snapshot(self) -> bytes:
        time.sleep(0.4)
        return super().snapshot()


async def test_taking_a_snapshot_leaves_the_event_loop_free() -> None:
    async with make_cluster(1, snapshot_entries=5) as cluster:
        await cluster.crash("n1")
        replica = await cluster.start("n1", fsm=SlowSnapshots())
        await cluster.leader()
        async with loop_lags() as lags:
            await asyncio.gather(*(replica.propose(put(f"k{i}")) for i in range(5)))
            await eventually(lambda: replica.stats.snapshots == 1, "the replica took its snapshot")
        assert max(lags) < 0.2, f"the loop stalled {max(lags):.2f} s while the snapshot was taken"


class SlowRestores(KvStateMachine):
    """Snapshots that take a while to decode, as a large state's do."""

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        time.sleep(0.4)
        return super().prepare_restore(data)


async def test_installing_a_snapshot_leaves_the_event_loop_free() -> None:
    async with make_cluster(snapshot_entries=5, snapshot_catchup_entries=0) as cluster:
        leader = await cluster.leader()
        behind = cluster.others(leader.id)[0].id
        await cluster.crash(behind)
        for i in range(12):
            await leader.propose(put(f"k{i}"))
        await eventually(lambda: leader.stats.snapshots >= 1, "the leader compacted past the stopped node")
        fsm = SlowRestores()
        async with loop_lags() as lags:
            replica = await cluster.start(behind, fsm=fsm)
            await eventually(lambda: replica.stats.snapshots_installed == 1, "the node installed the leader's snapshot")
            await eventually(lambda: fsm.get("k11") is not None, "the node caught up")
        assert max(lags) < 0.2, f"the loop stalled {max(lags):.2f} s while the snapshot was installed"


async def test_a_long_catch_up_yields_to_the_event_loop_while_applying() -> None:
    async with make_cluster(1) as cluster:
        replica = await cluster.leader()
        await asyncio.gather(*(replica.propose(put(f"k{i}")) for i in range(3000)))
        await cluster.crash("n1")
        fsm = KvStateMachine()
        replica = await cluster.start("n1", fsm=fsm)
        target = replica.commit_index
        seen: list[int] = []
        while replica.applied_index < target:
            seen.append(replica.applied_index)
            await asyncio.sleep(0)
        midway = {index for index in seen if 0 < index < target}
        assert len(midway) >= 3, f"the replay held the loop; applied indexes seen: {sorted(set(seen))}"
        assert len(fsm) == 3000


async def test_ticks_keep_to_the_clock() -> None:
    async with make_cluster(1) as cluster:
        replica = cluster.replica("n1")
        loop = asyncio.get_running_loop()
        stats = replica.stats
        began, ticked = loop.time(), stats.ticks + stats.ticks_skipped
        await eventually(lambda: stats.ticks + stats.ticks_skipped - ticked >= 30, "30 ticks")
        # Fired plus skipped ticks follow elapsed time, however late the loop runs.
        due = stats.ticks + stats.ticks_skipped - ticked
        assert abs(due - (loop.time() - began) / TICK) <= 2
        assert 0 <= replica.stats.last_tick_lag < 1


def test_an_idle_replica_on_uvloop_turns_its_loop_about_once_a_tick() -> None:
    """The node runs on uvloop, whose clock counts whole milliseconds: a tick due a hair
    after the current millisecond (sums of 0.01 rarely land on one) must not spin the
    loop until the next one."""

    async def turns_per_tick() -> float:
        async with make_cluster(1) as cluster:
            replica = await cluster.leader()
            await cluster.converged()
            turns = 0
            step_inputs = replica._step_inputs

            def counted() -> None:
                nonlocal turns
                turns += 1
                step_inputs()

            replica._step_inputs = counted  # type: ignore[method-assign]
            ticked = replica.stats.ticks
            await eventually(lambda: replica.stats.ticks - ticked >= 100, "100 ticks")
            return turns / (replica.stats.ticks - ticked)

    assert uvloop.run(turns_per_tick()) < 3
