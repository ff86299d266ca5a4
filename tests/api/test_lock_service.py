"""The LockService over real grpc.aio channels to an in-process three-node cluster:
calls through followers and the leader, blocking acquires, timeouts, deadlocks, leases,
reads, input errors, and mutual exclusion across a leader crash with retried writes."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from dsync.fsm.v1 import lock_pb2 as fsm_lock_pb2
from dsync.v1 import common_pb2, lock_pb2, lock_pb2_grpc
from server.api import commands, lock_service
from server.api.lock_service import add_lock_service
from server.fsm.lock import LockMachine
from server.fsm.lock_state import Mode
from tests.api.harness import ServiceCluster, service_cluster
from tests.replica.cluster import eventually

EXCLUSIVE, SHARED = lock_pb2.LOCK_MODE_EXCLUSIVE, lock_pb2.LOCK_MODE_SHARED
LOCAL = common_pb2.CONSISTENCY_LOCAL
T = TypeVar("T")
Response = TypeVar("Response", bound=ProtoMessage)


def stub(cluster: ServiceCluster, nid: str) -> lock_pb2_grpc.LockServiceAsyncStub:
    return lock_pb2_grpc.LockServiceStub(cluster.channel(nid))


def locks_of(cluster: ServiceCluster, nid: str) -> LockMachine:
    machine = cluster.machine(nid).components["lock"]
    assert isinstance(machine, LockMachine)
    return machine


@pytest.fixture
async def cluster() -> AsyncIterator[ServiceCluster]:
    async with service_cluster(register=[add_lock_service], components=lambda: {"lock": LockMachine()}) as cluster:
        yield cluster


async def roles(cluster: ServiceCluster) -> tuple[str, list[str]]:
    """(leader, followers) once the cluster has settled."""
    leader = (await cluster.raft.leader()).id
    return leader, [nid for nid in sorted(cluster.nodes) if nid != leader]


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def acquire(resource: str, owner: str, **fields: object) -> lock_pb2.AcquireRequest:
    return lock_pb2.AcquireRequest(resource=resource, owner=owner, **fields)  # type: ignore[arg-type]


async def waiting(cluster: ServiceCluster, nid: str, resource: str, owner: str) -> None:
    await eventually(lambda: locks_of(cluster, nid).waits(resource, owner), f"{owner} queued for {resource} on {nid}")


# ---------------------------------------------------------------------- the guide's flow


def test_the_guide_json_bodies_parse_into_the_requests() -> None:
    # The gateway maps "exclusive"/"shared" to the enum names; every other field is spelled as in the guide.
    body = '{"resource":"r1","owner":"bob","mode":"LOCK_MODE_EXCLUSIVE","timeout":2}'
    request = json_format.Parse(body, lock_pb2.AcquireRequest())
    assert (request.resource, request.owner, request.mode, request.timeout) == ("r1", "bob", EXCLUSIVE, 2.0)
    release = json_format.Parse('{"resource":"r1","owner":"alice"}', lock_pb2.ReleaseRequest())
    assert (release.resource, release.owner) == ("r1", "alice")


async def test_the_guide_flow_through_followers_and_the_leader(cluster: ServiceCluster) -> None:
    leader, (f1, f2) = await roles(cluster)
    alice = await stub(cluster, f1).Acquire(acquire("r1", "alice", mode=EXCLUSIVE))
    assert (alice.owner, alice.mode, alice.fencing_token, alice.ttl_seconds) == ("alice", EXCLUSIVE, 1, 30.0)
    got = await stub(cluster, leader).GetLock(lock_pb2.GetLockRequest(resource="r1"))
    assert [(h.owner, h.fencing_token) for h in got.lock.holders] == [("alice", 1)]
    busy = await rpc_error(stub(cluster, f2).Acquire(acquire("r1", "bob", timeout=0)))
    assert busy.code() == grpc.StatusCode.ABORTED and "held exclusively by alice" in (busy.details() or "")
    released = await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r1", owner="alice"))
    assert released.fencing_token == 1
    free = await stub(cluster, f2).GetLock(lock_pb2.GetLockRequest(resource="r1"))
    assert free.lock == lock_pb2.LockInfo(resource="r1")
    u1 = await stub(cluster, leader).Acquire(acquire("r2", "u1", mode=SHARED))
    u2 = await stub(cluster, f1).Acquire(acquire("r2", "u2", mode=SHARED))
    assert u1.mode == u2.mode == SHARED and u2.fencing_token > u1.fencing_token


# ---------------------------------------------------------------------- waiting


async def test_a_blocking_acquire_through_a_follower_is_granted_when_the_holder_releases(
    cluster: ServiceCluster,
) -> None:
    leader, (follower, _) = await roles(cluster)
    alice = await stub(cluster, leader).Acquire(acquire("r", "alice"))
    bob = asyncio.ensure_future(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=10)))
    await waiting(cluster, follower, "r", "bob")
    assert not bob.done()
    await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r", owner="alice"))
    granted = await asyncio.wait_for(bob, 5)
    assert granted.owner == "bob" and granted.fencing_token > alice.fencing_token


async def test_a_wait_that_runs_out_fails_with_aborted_after_about_the_timeout_and_leaves_the_queue(
    cluster: ServiceCluster,
) -> None:
    leader, (follower, _) = await roles(cluster)
    await stub(cluster, leader).Acquire(acquire("r", "alice"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    error = await rpc_error(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=0.5)))
    elapsed = loop.time() - began
    assert error.code() == grpc.StatusCode.ABORTED
    assert "timed out waiting for 'r'" in (error.details() or "") and "alice" in (error.details() or "")
    assert 0.5 <= elapsed < 2.0, elapsed
    info = await stub(cluster, follower).GetLock(lock_pb2.GetLockRequest(resource="r"))
    assert list(info.lock.waiters) == []


async def test_a_lease_that_expires_frees_the_lock_for_a_waiter(cluster: ServiceCluster) -> None:
    leader, (follower, _) = await roles(cluster)
    alice = await stub(cluster, leader).Acquire(acquire("r", "alice", ttl=0.3))
    loop = asyncio.get_running_loop()
    began = loop.time()
    bob = await stub(cluster, follower).Acquire(acquire("r", "bob", timeout=10))
    assert bob.fencing_token > alice.fencing_token and 0.3 <= loop.time() - began < 2.0
    check = lock_pb2.ValidateRequest(resource="r", owner="alice", fencing_token=alice.fencing_token)
    assert not (await stub(cluster, follower).Validate(check)).valid


async def test_refresh_keeps_a_lease_alive(cluster: ServiceCluster) -> None:
    leader, (follower, _) = await roles(cluster)
    granted = await stub(cluster, follower).Acquire(acquire("r", "alice", ttl=0.4))
    for _ in range(4):
        await asyncio.sleep(0.2)
        refreshed = await stub(cluster, leader).Refresh(lock_pb2.RefreshRequest(resource="r", owner="alice"))
        assert refreshed.fencing_token == granted.fencing_token and refreshed.ttl_seconds == 0.4
    check = lock_pb2.ValidateRequest(resource="r", owner="alice", fencing_token=granted.fencing_token)
    assert (await stub(cluster, follower).Validate(check)).valid
    error = await rpc_error(stub(cluster, follower).Refresh(lock_pb2.RefreshRequest(resource="r", owner="bob")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_deadlock_fails_at_once_naming_the_cycle(cluster: ServiceCluster) -> None:
    leader, (f1, f2) = await roles(cluster)
    await stub(cluster, leader).Acquire(acquire("r1", "alice"))
    await stub(cluster, leader).Acquire(acquire("r2", "bob"))
    bob = asyncio.ensure_future(stub(cluster, f1).Acquire(acquire("r1", "bob", timeout=10)))
    await waiting(cluster, f2, "r1", "bob")
    error = await rpc_error(stub(cluster, f2).Acquire(acquire("r2", "alice", timeout=10)))
    assert error.code() == grpc.StatusCode.ABORTED
    cycle = "deadlock: alice waits for r2 held by bob, bob waits for r1 held by alice"
    assert (error.details() or "").startswith(cycle)
    await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r1", owner="alice"))
    assert (await asyncio.wait_for(bob, 5)).owner == "bob"


def hold_acquire(monkeypatch: pytest.MonkeyPatch, owner: str, timeout_ms: int) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold back one Acquire's proposal -- as a slow commit would -- until the second
    event is set; the first is set once it is held, by when the RPC has registered for
    its wait's events (it always does so before proposing)."""
    held, release = asyncio.Event(), asyncio.Event()

    async def execute(
        replica: commands.Proposer,
        service: str,
        command: ProtoMessage,
        header: common_pb2.RequestHeader,
        expect: type[Response],
    ) -> Response:
        if isinstance(command, fsm_lock_pb2.LockCommand) and command.acquire.owner == owner:
            if command.acquire.timeout_ms == timeout_ms:
                held.set()
                await release.wait()
        return await commands.execute(replica, service, command, header, expect)

    monkeypatch.setattr(lock_service, "execute", execute)
    return held, release


async def test_an_earlier_wait_timing_out_does_not_answer_a_later_request_of_the_same_owner(
    cluster: ServiceCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's first wait times out while his second request is in flight: that ABORTED is
    the first request's answer.  The second queues, and is granted later."""
    leader, (follower, _) = await roles(cluster)
    held, commit = hold_acquire(monkeypatch, "bob", 10_000)
    alice = await stub(cluster, leader).Acquire(acquire("r", "alice", ttl=60))
    first = asyncio.ensure_future(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=0.3)))
    await waiting(cluster, follower, "r", "bob")
    second = asyncio.ensure_future(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=10)))
    await asyncio.wait_for(held.wait(), 5)
    assert "timed out" in ((await rpc_error(first)).details() or "")
    commit.set()
    await waiting(cluster, follower, "r", "bob")  # the second request's own wait
    await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r", owner="alice"))
    granted = await asyncio.wait_for(second, 5)
    assert granted.owner == "bob" and granted.fencing_token > alice.fencing_token
    check = lock_pb2.ValidateRequest(resource="r", owner="bob", fencing_token=granted.fencing_token)
    assert (await stub(cluster, leader).Validate(check)).valid


async def test_an_earlier_waits_grant_does_not_answer_a_later_request_of_the_same_owner(
    cluster: ServiceCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's first wait is granted, and that grant over, while his second request is in
    flight; by then carol holds the lock.  The second request must wait for carol, not
    come back with the first request's token."""
    leader, (follower, _) = await roles(cluster)
    held, commit = hold_acquire(monkeypatch, "bob", 10_000)
    s = stub(cluster, leader)
    await s.Acquire(acquire("r", "alice", ttl=60))
    first = asyncio.ensure_future(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=5)))
    await waiting(cluster, follower, "r", "bob")
    second = asyncio.ensure_future(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=10)))
    await asyncio.wait_for(held.wait(), 5)
    await s.Release(lock_pb2.ReleaseRequest(resource="r", owner="alice"))
    await asyncio.wait_for(first, 5)
    await s.Release(lock_pb2.ReleaseRequest(resource="r", owner="bob"))
    carol = await s.Acquire(acquire("r", "carol", ttl=60))
    commit.set()
    await waiting(cluster, follower, "r", "bob")  # queued behind carol
    await s.Release(lock_pb2.ReleaseRequest(resource="r", owner="carol"))
    granted = await asyncio.wait_for(second, 5)
    assert granted.fencing_token > carol.fencing_token
    check = lock_pb2.ValidateRequest(resource="r", owner="bob", fencing_token=granted.fencing_token)
    assert (await s.Validate(check)).valid


async def test_when_cluster_time_stalls_the_servicer_withdraws_the_wait(
    cluster: ServiceCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No clock entries (as with no leader for long): the wait's deadline never comes in
    cluster time, so the RPC's own safety net withdraws it -- through the log."""
    monkeypatch.setattr(lock_service, "WAIT_GRACE_S", 0.2)
    leader, (follower, _) = await roles(cluster)
    await stub(cluster, leader).Acquire(acquire("r", "alice"))
    for node in cluster.nodes.values():
        node.clock.cancel()
    error = await rpc_error(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=0.3)))
    assert error.code() == grpc.StatusCode.ABORTED and "cluster time stalled" in (error.details() or "")
    assert not locks_of(cluster, follower).waits("r", "bob")


async def test_a_wait_granted_inside_a_snapshot_a_follower_installs_is_answered_at_once() -> None:
    """The follower applies none of the entries that granted the wait: the install itself
    must make the waiting RPC look again, not leave it to the wall-clock safety net."""
    async with service_cluster(
        register=[add_lock_service],
        components=lambda: {"lock": LockMachine()},
        snapshot_entries=20,
        snapshot_catchup_entries=0,
    ) as cluster:
        leader, (follower, other) = await roles(cluster)
        await stub(cluster, leader).Acquire(acquire("r", "alice"))
        stats = cluster.raft.replica(follower).stats
        bob = asyncio.ensure_future(stub(cluster, follower).Acquire(acquire("r", "bob", timeout=60)))
        await waiting(cluster, follower, "r", "bob")
        cluster.raft.partition([leader, other], [follower])
        await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r", owner="alice"))
        for n in range(30):  # the leader snapshots and compacts its log past the follower
            await stub(cluster, leader).Acquire(acquire(f"filler-{n}", "f"))
        cluster.raft.heal()
        await eventually(lambda: stats.snapshots_installed >= 1, "the follower installs the leader's snapshot")
        granted = await asyncio.wait_for(bob, lock_service.WAIT_GRACE_S - 1)
        assert (granted.owner, granted.mode) == ("bob", EXCLUSIVE)


# ---------------------------------------------------------------------- reads


async def test_validate_get_lock_and_list_locks(cluster: ServiceCluster) -> None:
    leader, (follower, _) = await roles(cluster)
    a = await stub(cluster, leader).Acquire(acquire("jobs/a", "w1", mode=SHARED, ttl=60))
    await stub(cluster, leader).Acquire(acquire("jobs/a", "w2", mode=SHARED))
    for name in ("jobs/b", "jobs/c", "other"):
        await stub(cluster, leader).Acquire(acquire(name, "w1"))
    waiter = asyncio.ensure_future(stub(cluster, leader).Acquire(acquire("jobs/a", "w3", timeout=10)))
    await waiting(cluster, follower, "jobs/a", "w3")

    valid = await stub(cluster, follower).Validate(
        lock_pb2.ValidateRequest(resource="jobs/a", owner="w1", fencing_token=a.fencing_token)
    )
    assert valid.valid and valid.mode == SHARED and 59 < valid.expires_in_seconds <= 60
    stale = await stub(cluster, follower).Validate(
        lock_pb2.ValidateRequest(resource="jobs/a", owner="w2", fencing_token=a.fencing_token)
    )
    assert not stale.valid

    got = (await stub(cluster, follower).GetLock(lock_pb2.GetLockRequest(resource="jobs/a"))).lock
    assert got.mode == SHARED and [h.owner for h in got.holders] == ["w1", "w2"]
    assert [(w.owner, w.mode) for w in got.waiters] == [("w3", EXCLUSIVE)]
    assert 0 < got.waiters[0].expires_in_seconds <= 10

    first = await stub(cluster, follower).ListLocks(lock_pb2.ListLocksRequest(prefix="jobs/", page_size=2))
    assert [i.resource for i in first.locks] == ["jobs/a", "jobs/b"] and first.next_page_token
    rest = await stub(cluster, follower).ListLocks(
        lock_pb2.ListLocksRequest(prefix="jobs/", page_size=2, page_token=first.next_page_token, consistency=LOCAL)
    )
    assert [i.resource for i in rest.locks] == ["jobs/c"] and rest.next_page_token == ""
    everything = await stub(cluster, leader).ListLocks(lock_pb2.ListLocksRequest())
    assert [i.resource for i in everything.locks] == ["jobs/a", "jobs/b", "jobs/c", "other"]
    waiter.cancel()


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.Acquire(acquire("", "a")), "resource"),
        (lambda s: s.Acquire(acquire("r", "x" * 257)), "owner"),
        (lambda s: s.Acquire(acquire("r", "a\tb")), "owner"),
        (lambda s: s.Acquire(acquire("r", "a", mode=9)), "mode"),
        (lambda s: s.Acquire(acquire("r", "a", timeout=-1)), "timeout"),
        (lambda s: s.Acquire(acquire("r", "a", timeout=3601)), "timeout"),
        (lambda s: s.Acquire(acquire("r", "a", ttl=float("nan"))), "ttl"),
        (lambda s: s.Acquire(acquire("r", "a", ttl=86_401)), "ttl"),
        (lambda s: s.Acquire(acquire("r", "a", header=common_pb2.RequestHeader(sequence=1))), "header.client_id"),
        (lambda s: s.Release(lock_pb2.ReleaseRequest(resource="r")), "owner"),
        (lambda s: s.Refresh(lock_pb2.RefreshRequest(resource="r", owner="a", ttl=-0.5)), "ttl"),
        (lambda s: s.Validate(lock_pb2.ValidateRequest(resource="r", owner="a")), "fencing_token"),
        (lambda s: s.GetLock(lock_pb2.GetLockRequest(resource="r", consistency=7)), "consistency"),
        (lambda s: s.GetLock(lock_pb2.GetLockRequest()), "resource"),
        (lambda s: s.ListLocks(lock_pb2.ListLocksRequest(page_size=1001)), "page_size"),
        (lambda s: s.ListLocks(lock_pb2.ListLocksRequest(prefix="\x7f")), "prefix"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    cluster: ServiceCluster, call: Callable[[lock_pb2_grpc.LockServiceAsyncStub], Awaitable[object]], field: str
) -> None:
    error = await rpc_error(call(stub(cluster, "n1")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: "), error.details()


async def test_release_by_a_non_holder_fails_and_changes_nothing(cluster: ServiceCluster) -> None:
    leader, (follower, _) = await roles(cluster)
    alice = await stub(cluster, leader).Acquire(acquire("r", "alice"))
    error = await rpc_error(stub(cluster, follower).Release(lock_pb2.ReleaseRequest(resource="r", owner="bob")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "bob does not hold 'r', which is held exclusively by alice" in (error.details() or "")
    got = await stub(cluster, follower).GetLock(lock_pb2.GetLockRequest(resource="r"))
    assert [(h.owner, h.fencing_token) for h in got.lock.holders] == [("alice", alice.fencing_token)]


# ---------------------------------------------------------------------- a leader crash


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def with_retries(
    cluster: ServiceCluster,
    call: Callable[[lock_pb2_grpc.LockServiceAsyncStub], Awaitable[T]],
    on: str = "",
    spread: int = 0,
) -> T:
    """Retry a call (the same request, so the same header) on node `on`, or on the
    running nodes in turn starting with the `spread`-th, while the answer says to retry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    for attempt in itertools.count(spread):
        nodes = [on] if on else sorted(cluster.nodes)
        try:
            return await call(stub(cluster, nodes[attempt % len(nodes)]))
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or loop.time() > deadline:
                raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not us being cancelled: the harness closed the channel of the node it crashed.
        await asyncio.sleep(0.05)
    raise AssertionError("itertools.count() ended")


async def test_a_retried_acquire_and_release_after_a_leader_crash_take_effect_once(cluster: ServiceCluster) -> None:
    leader, (follower, _) = await roles(cluster)
    header = common_pb2.RequestHeader(client_id="sdk-1", sequence=1)
    request = acquire("r", "alice", header=header)
    first = await stub(cluster, follower).Acquire(request)
    await cluster.crash(leader)
    await cluster.raft.leader()
    again = await with_retries(cluster, lambda s: s.Acquire(request))
    assert again == first  # the first result, not a second grant
    got = await with_retries(cluster, lambda s: s.GetLock(lock_pb2.GetLockRequest(resource="r")))
    assert [(h.owner, h.fencing_token) for h in got.lock.holders] == [("alice", first.fencing_token)]

    release = lock_pb2.ReleaseRequest(
        header=common_pb2.RequestHeader(client_id="sdk-1", sequence=2), resource="r", owner="alice"
    )
    released = await with_retries(cluster, lambda s: s.Release(release))
    await cluster.start(leader)  # the old leader comes back and replays the log
    for nid in sorted(cluster.nodes):  # a retry anywhere gets the first answer, not FAILED_PRECONDITION
        assert await with_retries(cluster, lambda s: s.Release(release), on=nid) == released
    await cluster.raft.converged()
    assert all(not locks_of(cluster, nid).describe("r", 0).holders for nid in cluster.nodes)


async def test_a_leader_crash_mid_run_never_grants_one_lock_to_two_holders(cluster: ServiceCluster) -> None:
    """Clients loop acquire -> critical section -> release, retrying every write with its
    header on any node, while the leader crashes and comes back.  The critical sections
    never overlap and the tokens they ran under only grow."""
    in_section: list[str] = []
    tokens: list[int] = []
    rounds = 6

    async def client(number: int) -> None:
        name = f"c{number}"
        for seq in range(1, 2 * rounds, 2):
            header = common_pb2.RequestHeader(client_id=name, sequence=seq)
            request = acquire("shared-resource", name, header=header, timeout=20, ttl=30)
            granted = await with_retries(cluster, lambda s: s.Acquire(request), spread=number + seq)
            assert not in_section, f"{name} granted {granted.fencing_token} while {in_section} holds the lock"
            in_section.append(name)
            tokens.append(granted.fencing_token)
            await asyncio.sleep(0.02)
            in_section.remove(name)
            release = lock_pb2.ReleaseRequest(
                header=common_pb2.RequestHeader(client_id=name, sequence=seq + 1),
                resource="shared-resource",
                owner=name,
            )
            await with_retries(cluster, lambda s: s.Release(release), spread=number + seq)

    clients = [asyncio.create_task(client(i)) for i in range(3)]
    await eventually(lambda: len(tokens) >= 4, "a few grants before the crash")
    leader = (await cluster.raft.leader()).id
    await cluster.crash(leader)
    await eventually(lambda: len(tokens) >= 10, "grants under the new leader")
    await cluster.start(leader)
    await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert len(tokens) == 3 * rounds and tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_a_retry_answered_from_the_session_never_hands_out_a_grant_whose_lease_ended(
    cluster: ServiceCluster,
) -> None:
    """The first attempt was granted but its answer lost; by the retry the lease has run out
    and the lock moved on.  The cached grant must not come back as if still held."""
    leader, followers = await roles(cluster)
    header = common_pb2.RequestHeader(client_id="a-client", sequence=1)
    first = await stub(cluster, leader).Acquire(acquire("stale", "alice", ttl=0.2, header=header))
    machine = locks_of(cluster, leader)
    await eventually(lambda: machine.holding("stale", "alice", Mode.EXCLUSIVE, 0) is None, "alice's lease to end")
    bob = await stub(cluster, leader).Acquire(acquire("stale", "bob"))
    assert bob.fencing_token > first.fencing_token
    error = await rpc_error(stub(cluster, followers[0]).Acquire(acquire("stale", "alice", ttl=0.2, header=header)))
    assert error.code() == grpc.StatusCode.ABORTED and "already ended" in (error.details() or "")
    assert locks_of(cluster, leader).holding("stale", "bob", Mode.EXCLUSIVE, 0) is not None


async def test_a_retried_acquire_whose_wait_ended_is_answered_from_the_machine(cluster: ServiceCluster) -> None:
    """The session remembers "queued"; the wait it names is over by the retry, so its
    event is gone: the answer is the grant while it stands, and ABORTED after."""
    leader, (follower, _) = await roles(cluster)
    await stub(cluster, leader).Acquire(acquire("r", "alice"))
    request = acquire("r", "bob", timeout=10, header=common_pb2.RequestHeader(client_id="bob-client", sequence=1))
    first = asyncio.ensure_future(stub(cluster, follower).Acquire(request))
    await waiting(cluster, follower, "r", "bob")
    await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r", owner="alice"))
    granted = await asyncio.wait_for(first, 5)
    again = await stub(cluster, follower).Acquire(request)
    assert (again.owner, again.mode, again.fencing_token) == ("bob", EXCLUSIVE, granted.fencing_token)
    await stub(cluster, leader).Release(lock_pb2.ReleaseRequest(resource="r", owner="bob"))
    error = await rpc_error(stub(cluster, follower).Acquire(request))
    assert error.code() == grpc.StatusCode.ABORTED and "already ended" in (error.details() or "")


async def test_a_retried_refresh_after_an_upgrade_names_the_hold_that_replaced_the_renewed_one(
    cluster: ServiceCluster,
) -> None:
    """The upgrade's grant is a new hold with a new token and lease: not the one renewed."""
    leader, followers = await roles(cluster)
    lock = stub(cluster, leader)
    await lock.Acquire(acquire("up", "o", mode=SHARED))
    await lock.Acquire(acquire("up", "p", mode=SHARED))
    upgrade = asyncio.ensure_future(lock.Acquire(acquire("up", "o", mode=EXCLUSIVE, timeout=30)))
    await waiting(cluster, leader, "up", "o")
    header = common_pb2.RequestHeader(client_id="o-client", sequence=1)
    request = lock_pb2.RefreshRequest(resource="up", owner="o", header=header)
    first = await lock.Refresh(request)
    await lock.Release(lock_pb2.ReleaseRequest(resource="up", owner="p"))
    upgraded = await asyncio.wait_for(upgrade, 10)
    await eventually(lambda: locks_of(cluster, followers[0]).holding("up", "o", Mode.EXCLUSIVE, 0), "the upgrade applied")
    error = await rpc_error(stub(cluster, followers[0]).Refresh(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"(token {first.fencing_token}) has ended since, and o holds it under token {upgraded.fencing_token}" in (
        error.details() or ""
    )


async def test_a_retried_refresh_never_reports_a_renewal_of_a_lease_that_ended_since(cluster: ServiceCluster) -> None:
    """The first Refresh renewed the lease but its answer was lost; by the retry the lease
    has run out and another owner holds the lock.  The remembered "renewed" must not come back."""
    leader, followers = await roles(cluster)
    granted = await stub(cluster, leader).Acquire(acquire("stale", "alice", ttl=0.2))
    header = common_pb2.RequestHeader(client_id="a-client", sequence=1)
    request = lock_pb2.RefreshRequest(resource="stale", owner="alice", header=header)
    first = await stub(cluster, leader).Refresh(request)
    assert first.fencing_token == granted.fencing_token
    machine = locks_of(cluster, leader)
    await eventually(lambda: machine.holding("stale", "alice", Mode.EXCLUSIVE, 0) is None, "alice's lease to end")
    bob = await stub(cluster, leader).Acquire(acquire("stale", "bob"))
    error = await rpc_error(stub(cluster, followers[0]).Refresh(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"(token {granted.fencing_token}) has ended since, and alice holds nothing" in (error.details() or "")
    check = lock_pb2.ValidateRequest(resource="stale", owner="bob", fencing_token=bob.fencing_token)
    assert (await stub(cluster, leader).Validate(check)).valid
