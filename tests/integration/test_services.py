"""The public services end to end on a real 3-node cluster, with the leader killed mid-run.

Every test talks to all three node processes through the generated dsync.v1 stubs over
grpc.aio, sending each call to a random live node.  A call that fails with UNAVAILABLE
or DEADLINE_EXCEEDED is retried on another node *with the same request* -- the same
RequestHeader (client_id, sequence) -- because that is what makes a retry safe: the
first attempt may have committed before its node died, and the cluster's client
sessions answer the retry with the first result instead of applying it twice.  The
histories the clients record are then checked for what each service promises.
"""

from __future__ import annotations

import asyncio
import operator
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dsync.v1 import cache_pb2, cache_pb2_grpc, common_pb2, lock_pb2, lock_pb2_grpc, queue_pb2, queue_pb2_grpc
from server.cluster import LocalCluster
from tests.integration.conftest import ELECTION_TIMEOUT_S, POLL_S, poll

if TYPE_CHECKING:
    from dsync.v1.cache_pb2_grpc import CacheServiceAsyncStub
    from dsync.v1.lock_pb2_grpc import LockServiceAsyncStub
    from dsync.v1.queue_pb2_grpc import QueueServiceAsyncStub

pytestmark = pytest.mark.integration

Reply = TypeVar("Reply")

# Worth another try, elsewhere: the node is down or lost its leader, or the call outlived
# its deadline (a follower still waiting on a dead leader).  Either way the write may
# have committed, which the retry's unchanged header takes care of.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A plain call's deadline: well above a commit on loopback, well below the replica's own
# 5 s proposal timeout, so a call stuck on a dead leader is retried elsewhere soon.
CALL_TIMEOUT_S = 2.0
# Beyond this a call that keeps failing retryably fails the test: an election takes ~1 s.
GIVE_UP_S = 20.0
# Between attempts, so a node refusing at once (no leader yet) is not hammered.
RETRY_PAUSE_S = 0.05
# The share of writes sent a second time with the same header (see Nodes.write).
REPLAY_SHARE = 0.2

# How long each phase may take to reach its count: generous, a failure means no progress.
PHASE_TIMEOUT_S = 20.0


@dataclass
class NodeStubs:
    lock: LockServiceAsyncStub
    queue: QueueServiceAsyncStub
    cache: CacheServiceAsyncStub
    # Their third-party type stubs declare no methods for grpc.aio channels.
    health: Any
    reflection: Any


class Nodes:
    """A channel and every service's stub per node; `call` spreads calls over live nodes."""

    def __init__(self, cluster: LocalCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.alive = {n.name for n in cluster}
        self.retries: Counter[str] = Counter()
        self.replays = 0
        self._channels = {n.name: grpc.aio.insecure_channel(n.grpc_address) for n in cluster}
        self.stubs = {
            name: NodeStubs(
                lock_pb2_grpc.LockServiceStub(ch),
                queue_pb2_grpc.QueueServiceStub(ch),
                cache_pb2_grpc.CacheServiceStub(ch),
                health_pb2_grpc.HealthStub(ch),
                reflection_pb2_grpc.ServerReflectionStub(ch),  # type: ignore[arg-type]  # works on aio too
            )
            for name, ch in self._channels.items()
        }

    def pick(self, avoid: str | None = None) -> str:
        """A random live node, other than `avoid` when there is a choice."""
        choices = sorted(self.alive - {avoid}) or sorted(self.alive)
        return self.rng.choice(choices)

    async def call(self, invoke: Callable[[NodeStubs], Awaitable[Reply]]) -> Reply:
        """`invoke` on a random live node, again on another one while it fails retryably.

        `invoke` must send the same request every time: that is the retry's safety.
        """
        give_up = time.monotonic() + GIVE_UP_S
        node: str | None = None
        while True:
            node = self.pick(avoid=node)
            try:
                return await invoke(self.stubs[node])
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > give_up:
                    raise
                self.retries[exc.code().name] += 1
            await asyncio.sleep(RETRY_PAUSE_S)

    async def write(
        self,
        invoke: Callable[[NodeStubs], Awaitable[Reply]],
        same: Callable[[Reply, Reply], bool] = operator.eq,
    ) -> Reply:
        """`call` for a write; a random fraction are sent again once answered, as a client
        whose answer was lost would, and must get the same answer (`same`) from the session.

        A kill -9 loses answers only by chance; replaying makes sure the deduplication that
        the retries rely on is exercised, before and after the leader change alike.
        """
        reply = await self.call(invoke)
        if self.rng.random() < REPLAY_SHARE:
            again = await self.call(invoke)
            assert same(reply, again), f"a replayed write was answered differently: {reply} then {again}"
            self.replays += 1
        return reply

    async def kill_leader(self) -> tuple[str, float]:
        """kill -9 the leader; returns its name and when it died.  No call goes to it after."""
        leader = await self.cluster.wait_for_leader(timeout=10)
        self.alive.discard(leader)  # first, so no new call picks it while it dies
        await self.cluster.kill(leader)
        return leader, time.monotonic()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@pytest.fixture
async def nodes(cluster: LocalCluster) -> AsyncIterator[Nodes]:
    client = Nodes(cluster, random.Random())
    yield client
    await client.close()


class Session:
    """One client's RequestHeader source: a stable client_id, a new sequence per write."""

    def __init__(self) -> None:
        self.client_id = str(uuid.uuid4())
        self.sequence = 0

    def next(self) -> common_pb2.RequestHeader:
        self.sequence += 1
        return common_pb2.RequestHeader(client_id=self.client_id, sequence=self.sequence)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Until `condition()` holds; fails naming `what` after PHASE_TIMEOUT_S."""

    async def holds() -> bool:
        return condition()

    await poll(holds, bool, what, PHASE_TIMEOUT_S)


# ---------------------------------------------------------------------------- locks

LOCK_CLIENTS = 8
# Grants to see before the leader is killed, and as many after: each is a chance to catch a fault.
GRANTS_EACH_SIDE = 30
RESOURCE = "the-one-resource"
ACQUIRE_WAIT_S = 2.0
LEASE_S = 5.0


@dataclass(frozen=True)
class Section:
    """A critical section as one client saw it.

    The lock was held under `token` from before `granted_at` (the grant committed before
    its answer arrived) until after `checked_at` (a linearizable Validate sent then said
    so), so [granted_at, checked_at] lies inside the true hold, whatever the clocks.
    """

    owner: str
    token: int
    granted_at: float
    checked_at: float


def _same_grant(first: lock_pb2.AcquireResponse, again: lock_pb2.AcquireResponse) -> bool:
    """The same grant: a replay answered after a wait reads the lease as it is now."""
    return (first.owner, first.mode, first.fencing_token) == (again.owner, again.mode, again.fencing_token)


async def test_lock_holders_never_overlap_and_tokens_grow_across_a_leader_kill(nodes: Nodes) -> None:
    sections: list[Section] = []
    aborted = Counter[str]()
    stop = asyncio.Event()

    async def client(n: int) -> None:
        owner, session = f"owner-{n}", Session()
        rng = random.Random(n)
        while not stop.is_set():
            acquire = lock_pb2.AcquireRequest(
                header=session.next(),
                resource=RESOURCE,
                owner=owner,
                mode=lock_pb2.LOCK_MODE_EXCLUSIVE,
                timeout=ACQUIRE_WAIT_S,
                ttl=LEASE_S,
            )
            try:
                grant = await nodes.write(
                    lambda s: s.lock.Acquire(acquire, timeout=ACQUIRE_WAIT_S + CALL_TIMEOUT_S), same=_same_grant
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:  # the wait timed out: ask again
                    raise
                aborted[owner] += 1
                continue
            granted_at = time.monotonic()
            assert grant.owner == owner and grant.mode == lock_pb2.LOCK_MODE_EXCLUSIVE
            await asyncio.sleep(rng.uniform(0, 0.02))  # the protected work
            validate = lock_pb2.ValidateRequest(resource=RESOURCE, owner=owner, fencing_token=grant.fencing_token)
            sent_at = 0.0

            async def check(s: NodeStubs) -> lock_pb2.ValidateResponse:
                nonlocal sent_at
                sent_at = time.monotonic()  # of the attempt that answers: its read point is later
                return await s.lock.Validate(validate, timeout=CALL_TIMEOUT_S)

            verdict = await nodes.call(check)
            assert verdict.valid, f"{owner} lost token {grant.fencing_token} inside its critical section"
            sections.append(Section(owner, grant.fencing_token, granted_at, sent_at))
            release = lock_pb2.ReleaseRequest(header=session.next(), resource=RESOURCE, owner=owner)
            # A retry whose first attempt released the lock gets that answer from the session;
            # without deduplication it would fail with FAILED_PRECONDITION and fail the test.
            released = await nodes.write(lambda s: s.lock.Release(release, timeout=CALL_TIMEOUT_S))
            assert released.fencing_token == grant.fencing_token
            # Work that needs no lock: now and then nobody waits, so grants happen both from
            # the queue and at once -- two paths that must each respect the holder.
            await asyncio.sleep(rng.uniform(0, 0.1))

    async with asyncio.TaskGroup() as clients:
        for n in range(LOCK_CLIENTS):
            clients.create_task(client(n))
        await wait_until(lambda: len(sections) >= GRANTS_EACH_SIDE, "lock grants before the kill")
        leader, killed_at = await nodes.kill_leader()
        await wait_until(
            lambda: sum(s.granted_at > killed_at for s in sections) >= GRANTS_EACH_SIDE, "lock grants after the kill"
        )
        stop.set()

    after = [s for s in sections if s.granted_at > killed_at]
    print(
        f"{len(sections)} critical sections, {len(after)} after kill -9 of {leader} "
        f"(first {after[0].granted_at - killed_at:.2f} s after); aborted waits {sum(aborted.values())}; "
        f"retries {dict(nodes.retries)}, replays {nodes.replays}"
    )
    history = sorted(sections, key=lambda s: s.granted_at)
    assert len({s.token for s in history}) == len(history), "a fencing token was granted twice"
    for earlier, later in zip(history, history[1:], strict=False):
        assert earlier.token < later.token, f"token went backwards: {earlier} then {later}"
        assert earlier.checked_at <= later.granted_at, f"two holders at once: {earlier} and {later}"
    assert len({s.owner for s in after}) > 1, "after the kill only one client made progress"


# ---------------------------------------------------------------------------- queue

TOPIC = "orders"
PUBLISHERS = 8
MESSAGES = 240
CONSUMERS = 2


def _payload(message_id: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=f"body of {message_id}")


async def test_every_acknowledged_publish_is_delivered_across_a_leader_kill(nodes: Nodes) -> None:
    acked: dict[str, float] = {}  # message id -> when its Publish was answered

    async def publisher(n: int) -> None:
        session = Session()
        for i in range(n, MESSAGES, PUBLISHERS):
            message_id = f"msg-{i:04d}"
            request = queue_pb2.PublishRequest(
                header=session.next(), topic=TOPIC, id=message_id, data=_payload(message_id)
            )
            reply = await nodes.write(lambda s: s.queue.Publish(request, timeout=CALL_TIMEOUT_S))
            assert reply.id == message_id
            # The session answers a retry with the first attempt's result; a second
            # application would have found the id taken and said `duplicate`.
            assert not reply.duplicate, f"{message_id}: a retried publish was applied twice"
            acked[message_id] = time.monotonic()

    async with asyncio.TaskGroup() as publishers:
        for n in range(PUBLISHERS):
            publishers.create_task(publisher(n))
        await wait_until(lambda: len(acked) >= MESSAGES // 3, "publishes before the kill")
        leader, killed_at = await nodes.kill_leader()
    assert len(acked) == MESSAGES
    after_kill = sum(t > killed_at for t in acked.values())
    assert after_kill >= MESSAGES // 3, f"only {after_kill} publishes were answered after the kill"

    deliveries: defaultdict[str, list[queue_pb2.Delivery]] = defaultdict(list)
    settled: set[str] = set()

    async def consumer(n: int) -> None:
        session = Session()
        while not settled >= acked.keys():
            consume = queue_pb2.ConsumeRequest(
                header=session.next(),
                topic=TOPIC,
                consumer=f"consumer-{n}",
                max_messages=32,
                visibility_timeout=30,
            )  # no wait_timeout: a long poll's later attempts are new writes, so not replayable
            reply = await nodes.write(lambda s: s.queue.Consume(consume, timeout=CALL_TIMEOUT_S))
            if not reply.messages:  # the rest are with the other consumer
                await asyncio.sleep(POLL_S)
            for delivery in reply.messages:
                deliveries[delivery.id].append(delivery)
                ack = queue_pb2.AckRequest(
                    header=session.next(), topic=TOPIC, id=delivery.id, receipt=delivery.receipt
                )
                await nodes.write(lambda s: s.queue.Ack(ack, timeout=CALL_TIMEOUT_S))
                settled.add(delivery.id)

    try:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await asyncio.gather(*(consumer(n) for n in range(CONSUMERS)))
    except TimeoutError:
        pytest.fail(f"acknowledged publishes never delivered: {sorted(acked.keys() - settled)}")
    print(
        f"{MESSAGES} published, {after_kill} answered after kill -9 of {leader}; "
        f"{sum(map(len, deliveries.values()))} deliveries; retries {dict(nodes.retries)}, replays {nodes.replays}"
    )
    assert deliveries.keys() == acked.keys(), f"delivered but never published: {deliveries.keys() - acked.keys()}"
    for message_id, copies in deliveries.items():
        assert all(d.data == _payload(message_id) for d in copies), f"{message_id}: payload changed"
        counts = [d.delivery_count for d in copies]
        assert len(set(counts)) == len(counts), f"{message_id} delivered twice as the same delivery: {counts}"
    stats = await nodes.call(lambda s: s.queue.Stats(queue_pb2.StatsRequest(topic=TOPIC), timeout=CALL_TIMEOUT_S))
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead_lettered) == (0, 0, 0, 0), stats


# ---------------------------------------------------------------------------- cache

WRITERS = 6
KEYS = ("alpha", "beta", "gamma")
# Puts to see before the leader is killed, and as many after.
PUTS_EACH_SIDE = 50


@dataclass
class CacheHistory:
    puts: dict[int, tuple[str, str]] = field(default_factory=dict)  # version -> (key, value) acknowledged
    puts_after_kill: int = 0
    reads: list[tuple[str, cache_pb2.GetResponse]] = field(default_factory=list)


async def test_a_linearizable_get_never_returns_an_older_version_across_a_leader_kill(nodes: Nodes) -> None:
    history = CacheHistory()
    killed_at = float("inf")
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        session, rng = Session(), random.Random(n)
        while not stop.is_set():
            key = rng.choice(KEYS)
            put = cache_pb2.PutRequest(header=session.next(), key=key)
            put.value.string_value = f"writer {n} write {session.sequence}"
            version = (await nodes.write(lambda s: s.cache.Put(put, timeout=CALL_TIMEOUT_S))).version
            assert version not in history.puts, f"two acknowledged Puts have version {version}"
            history.puts[version] = (key, put.value.string_value)
            history.puts_after_kill += time.monotonic() > killed_at
            get = cache_pb2.GetRequest(key=key, consistency=common_pb2.CONSISTENCY_LINEARIZABLE)
            read = await nodes.call(lambda s: s.cache.Get(get, timeout=CALL_TIMEOUT_S))
            assert read.found and read.version >= version, (
                f"Get({key!r}) after Put version {version} was acknowledged answered version {read.version}"
            )
            assert read.read_index >= version
            history.reads.append((key, read))

    async with asyncio.TaskGroup() as writers:
        for n in range(WRITERS):
            writers.create_task(writer(n))
        await wait_until(lambda: len(history.puts) >= PUTS_EACH_SIDE, "Puts before the kill")
        leader, killed_at = await nodes.kill_leader()
        await wait_until(lambda: history.puts_after_kill >= PUTS_EACH_SIDE, "Puts after the kill")
        stop.set()

    print(
        f"{len(history.puts)} Puts ({history.puts_after_kill} after kill -9 of {leader}), "
        f"{len(history.reads)} linearizable Gets; retries {dict(nodes.retries)}, replays {nodes.replays}"
    )
    # A read of a version some writer had acknowledged carries that writer's value.
    for key, read in history.reads:
        if read.version in history.puts:
            assert history.puts[read.version] == (key, read.value.string_value), read


# ---------------------------------------------------------------------------- health, reflection

SERVICES = (
    "dsync.v1.LockService",
    "dsync.v1.QueueService",
    "dsync.v1.CacheService",
    "dsync.v1.ClusterService",
    "grpc.health.v1.Health",
)


async def _health(stubs: NodeStubs) -> int:
    reply: health_pb2.HealthCheckResponse = await stubs.health.Check(
        health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S
    )
    return reply.status


async def wait_for_health(stubs: NodeStubs, status: int, what: str, timeout: float) -> float:
    """Seconds until the node's overall health is `status`; fails naming `what` after `timeout`."""
    began = time.monotonic()
    seen = await _health(stubs)
    while seen != status:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name
        assert time.monotonic() - began < timeout, f"{what}: still {name(seen)} after {timeout:.1f} s"
        await asyncio.sleep(POLL_S)
        seen = await _health(stubs)
    return time.monotonic() - began


async def _reflect(
    stubs: NodeStubs, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call = stubs.reflection.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_S)
    replies: list[reflection_pb2.ServerReflectionResponse] = [response async for response in call]
    (reply,) = replies
    return reply


async def test_reflection_lists_the_services_and_health_follows_the_leader(
    cluster: LocalCluster, nodes: Nodes
) -> None:
    for name, stubs in nodes.stubs.items():
        listed = await _reflect(stubs, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert set(SERVICES) <= {s.name for s in listed.list_services_response.service}, name
        found = await _reflect(stubs, reflection_pb2.ServerReflectionRequest(file_by_filename="dsync/v1/lock.proto"))
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        lock_file = next((f for f in files if f.name == "dsync/v1/lock.proto"), None)
        assert lock_file is not None, f"{name} sent {[f.name for f in files]}"
        assert lock_file.package == "dsync.v1" and [s.name for s in lock_file.service] == ["LockService"]
        # The fixture waited until every node knows the leader; health polls that every 0.1 s.
        await wait_for_health(stubs, health_pb2.HealthCheckResponse.SERVING, f"{name} with a leader", timeout=2)

    # The leader stays: it must notice on its own (CheckQuorum) that nobody follows it any more.
    leader = await cluster.wait_for_leader(timeout=10)
    for name in sorted(nodes.alive - {leader}):
        await cluster.kill(name)
    took = await wait_for_health(
        nodes.stubs[leader],
        health_pb2.HealthCheckResponse.NOT_SERVING,
        f"{leader} left alone",
        timeout=3 * ELECTION_TIMEOUT_S,
    )
    print(f"{leader}, left alone, reported NOT_SERVING {took:.2f} s after its followers were killed")
