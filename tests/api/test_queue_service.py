"""QueueService end to end: real grpc.aio channels to an in-process 3-node cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from dsync.fsm.v1 import queue_pb2 as fsm_queue
from dsync.v1 import common_pb2, queue_pb2_grpc
from dsync.v1 import queue_pb2 as api
from server.api import queue_service
from server.api.queue_service import add_queue_service
from server.fsm.base import ApplyContext, Result
from server.fsm.queue import QueueMachine, ready_key
from server.raft import NodeId
from tests.api.harness import ServiceCluster, service_cluster
from tests.replica.cluster import eventually

if TYPE_CHECKING:
    from dsync.v1.queue_pb2_grpc import QueueServiceAsyncStub as Stub

RPC_TIMEOUT = 10.0
Answer = TypeVar("Answer")


@pytest.fixture
async def cluster() -> AsyncIterator[ServiceCluster]:
    async with service_cluster(register=[add_queue_service], components=lambda: {"queue": QueueMachine()}) as c:
        yield c


def queue(cluster: ServiceCluster, nid: NodeId) -> Stub:
    return queue_pb2_grpc.QueueServiceStub(cluster.channel(nid))


def value(data: object) -> struct_pb2.Value:
    return json_format.Parse(json.dumps(data), struct_pb2.Value())


async def publish(stub: Stub, topic: str, payload: bytes, **fields: object) -> api.PublishResponse:
    request = api.PublishRequest(topic=topic, raw=payload, **fields)  # type: ignore[arg-type]
    return await stub.Publish(request, timeout=RPC_TIMEOUT)


async def consume(stub: Stub, topic: str, **fields: object) -> list[api.Delivery]:
    request = api.ConsumeRequest(topic=topic, consumer="worker", **fields)  # type: ignore[arg-type]
    return list((await stub.Consume(request, timeout=RPC_TIMEOUT)).messages)


async def stats(stub: Stub, topic: str) -> api.StatsResponse:
    return await stub.Stats(api.StatsRequest(topic=topic), timeout=RPC_TIMEOUT)


async def waiting(cluster: ServiceCluster, nid: NodeId, topic: str) -> None:
    """Until a long poll on `nid` waits for `topic`."""
    hub = cluster.nodes[nid].hub
    await eventually(lambda: ready_key(topic) in hub._waiting, f"a long poll on {nid} waits for {topic}")


def test_the_deployment_guides_json_bodies_parse_into_the_requests() -> None:
    consume_body = json_format.Parse('{"topic":"t","consumer":"c1"}', api.ConsumeRequest())
    assert (consume_body.topic, consume_body.consumer) == ("t", "c1")
    ack_body = json_format.Parse('{"topic":"t","id":"dad11f12fd336e4d87ebd58c6aaa2579"}', api.AckRequest())
    assert ack_body.id == "dad11f12fd336e4d87ebd58c6aaa2579"
    publish_body = json_format.Parse('{"topic":"t","data":{"x":1},"id":"order-7"}', api.PublishRequest())
    assert json_format.MessageToDict(publish_body.data) == {"x": 1}
    nack_body = json_format.Parse('{"topic":"t","id":"a","delay":1.5}', api.NackRequest())
    assert nack_body.delay == 1.5


async def test_publish_on_one_node_consume_on_another_ack_on_a_third(cluster: ServiceCluster) -> None:
    published = await queue(cluster, "n1").Publish(
        api.PublishRequest(topic="orders", data=value({"x": 1, "items": ["a", None]})), timeout=RPC_TIMEOUT
    )
    (delivery,) = await consume(queue(cluster, "n2"), "orders")
    assert (delivery.id, delivery.delivery_count) == (published.id, 1)
    assert json_format.MessageToDict(delivery.data) == {"x": 1, "items": ["a", None]}
    await queue(cluster, "n3").Ack(
        api.AckRequest(topic="orders", id=delivery.id, receipt=delivery.receipt), timeout=RPC_TIMEOUT
    )
    assert await stats(queue(cluster, "n1"), "orders") == api.StatsResponse()


async def test_a_batch_is_published_in_order_and_consumed_in_order(cluster: ServiceCluster) -> None:
    entries = [api.PublishBatchRequest.Entry(raw=str(i).encode()) for i in range(5)]
    entries[2].id = "two"
    response = await queue(cluster, "n2").PublishBatch(
        api.PublishBatchRequest(topic="t", messages=entries), timeout=RPC_TIMEOUT
    )
    assert response.results[2] == api.PublishResponse(id="two")
    got = await consume(queue(cluster, "n3"), "t", max_messages=10)
    assert [d.raw for d in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert [d.id for d in got] == [r.id for r in response.results]


async def test_a_long_poll_returns_as_soon_as_a_message_is_published(cluster: ServiceCluster) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(consume(queue(cluster, "n2"), "t", wait_timeout=15))
    await waiting(cluster, "n2", "t")
    await publish(queue(cluster, "n3"), "t", b"hello")
    (delivery,) = await poll
    assert delivery.raw == b"hello"
    assert loop.time() - started < 10


async def test_a_long_poll_with_nothing_to_deliver_answers_empty_after_its_wait(cluster: ServiceCluster) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await consume(queue(cluster, "n1"), "t", wait_timeout=0.3) == []
    assert 0.3 <= loop.time() - started < 5
    assert await consume(queue(cluster, "n1"), "t") == []  # no wait: at once
    # A client deadline shorter than the wait: an empty answer in time, not DEADLINE_EXCEEDED.
    take = api.ConsumeRequest(topic="t", consumer="w", wait_timeout=20)
    assert await queue(cluster, "n2").Consume(take, timeout=1.0) == api.ConsumeResponse()


async def waiting_polls(cluster: ServiceCluster, nid: NodeId, topic: str, count: int) -> None:
    """Until `count` long polls on `nid` wait for `topic`."""
    hub = cluster.nodes[nid].hub
    await eventually(lambda: len(hub._waiting.get(ready_key(topic), [])) == count, f"{count} polls wait on {nid}")


def poll(stub: Stub, topic: str, consumer: str, wait: float) -> asyncio.Task[api.ConsumeResponse]:
    request = api.ConsumeRequest(topic=topic, consumer=consumer, wait_timeout=wait)
    return asyncio.ensure_future(stub.Consume(request, timeout=wait + RPC_TIMEOUT))


async def test_a_long_poll_on_a_follower_wakes_when_a_snapshot_brings_it_a_message() -> None:
    """A follower that installs the leader's snapshot applies none of the entries that made
    the message ready: the install itself must wake the poll."""
    async with service_cluster(
        register=[add_queue_service],
        components=lambda: {"queue": QueueMachine()},
        snapshot_entries=20,
        snapshot_catchup_entries=0,
    ) as cluster:
        leader = (await cluster.raft.leader()).id
        follower, other = (nid for nid in cluster.raft.ids if nid != leader)
        stats = cluster.raft.replica(follower).stats
        reads = stats.reads_served
        waits = poll(queue(cluster, follower), "t", "w", wait=15)
        await eventually(lambda: stats.reads_served > reads, "the poll confirms the topic empty, then waits")
        await waiting(cluster, follower, "t")
        cluster.raft.partition([leader, other], [follower])
        await publish(queue(cluster, leader), "t", b"m")
        for _ in range(60):  # the leader snapshots and compacts its log past the follower
            await publish(queue(cluster, leader), "filler", b"x")
        cluster.raft.heal()
        await eventually(lambda: stats.snapshots_installed >= 1, "the follower installs the leader's snapshot")
        got = await asyncio.wait_for(waits, 5)  # well before its 15 s
        assert [d.raw for d in got.messages] == [b"m"]


async def test_a_long_poll_that_missed_its_wake_up_looks_once_more_before_answering_empty(
    cluster: ServiceCluster,
) -> None:
    cluster.machine("n2").emit = lambda event: None  # n2's polls hear of nothing
    waits = poll(queue(cluster, "n2"), "t", "w", wait=1)
    await waiting(cluster, "n2", "t")
    await publish(queue(cluster, "n1"), "t", b"m")
    n2_queue = cluster.machine("n2").components["queue"]
    assert isinstance(n2_queue, QueueMachine)
    await eventually(lambda: n2_queue.ready_count("t") == 1, "n2 applies the publish")
    assert [d.raw for d in (await waits).messages] == [b"m"]


@asynccontextmanager
async def a_lost_consume() -> AsyncIterator[tuple[ServiceCluster, NodeId, NodeId]]:
    """A cluster (leader, follower) where m0 is ready on the follower and a Consume of it,
    proposed there while cut off, was lost on its way to the leader: it fails only after
    two (slow) election timeouts, and until then it claims m0."""
    async with service_cluster(
        register=[add_queue_service], components=lambda: {"queue": QueueMachine()}, election_ticks=200
    ) as cluster:
        leader = (await cluster.raft.leader()).id
        follower = next(nid for nid in cluster.raft.ids if nid != leader)
        await publish(queue(cluster, leader), "t", b"m0")
        on_follower = cluster.machine(follower).components["queue"]
        assert isinstance(on_follower, QueueMachine)
        await eventually(lambda: on_follower.ready_count("t") == 1, "the follower applies the publish")
        cluster.raft.partition([follower], [nid for nid in cluster.raft.ids if nid != follower])
        lost = poll(queue(cluster, follower), "t", "lost", wait=0)
        replica = cluster.raft.replica(follower)
        await eventually(lambda: replica.status()["pending_proposals"] == 1, "the lost Consume is in flight")
        cluster.raft.heal()
        try:
            yield cluster, leader, follower
        finally:
            lost.cancel()


async def test_a_consume_lost_with_its_leader_holds_other_polls_back_only_briefly() -> None:
    async with a_lost_consume() as (cluster, _, follower):
        got = await asyncio.wait_for(poll(queue(cluster, follower), "t", "p", wait=10), 2.5)
        assert [d.raw for d in got.messages] == [b"m0"]


async def test_a_poll_waiting_on_a_claim_takes_messages_published_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_service, "CLAIM_PATIENCE_S", 60.0)  # only the new message may wake it
    async with a_lost_consume() as (cluster, leader, follower):
        waits = poll(queue(cluster, follower), "t", "p", wait=10)
        await waiting(cluster, follower, "t")
        await publish(queue(cluster, leader), "t", b"m1")
        got = await asyncio.wait_for(waits, 2.5)
        assert [d.raw for d in got.messages] in ([b"m0"], [b"m1"])


class CountingQueue(QueueMachine):
    """Counts the Consume entries this replica applies."""

    def __init__(self) -> None:
        super().__init__()
        self.consumes = 0

    def apply(self, command: bytes, ctx: ApplyContext) -> Result:
        if fsm_queue.QueueCommand.FromString(command).WhichOneof("op") == "consume":
            self.consumes += 1
        return super().apply(command, ctx)


async def test_one_publish_to_many_waiting_long_polls_costs_one_consume_entry() -> None:
    async with service_cluster(register=[add_queue_service], components=lambda: {"queue": CountingQueue()}) as cluster:
        leader = (await cluster.raft.leader()).id
        follower = next(nid for nid in cluster.raft.ids if nid != leader)
        polls = [poll(queue(cluster, follower), "t", f"w{i}", wait=1.5) for i in range(30)]
        await waiting_polls(cluster, follower, "t", 30)
        counting = cluster.machine(leader).components["queue"]
        assert isinstance(counting, CountingQueue)
        before = counting.consumes
        await publish(queue(cluster, leader), "t", b"one")
        answers = await asyncio.gather(*polls)
        assert sorted(len(a.messages) for a in answers) == [0] * 29 + [1]
        assert counting.consumes - before == 1


async def test_long_polls_woken_together_each_take_one_message_of_a_batch(cluster: ServiceCluster) -> None:
    polls = [poll(queue(cluster, "n2"), "t", f"w{i}", wait=1.5) for i in range(5)]
    await waiting_polls(cluster, "n2", "t", 5)
    batch = [api.PublishBatchRequest.Entry(raw=b"%d" % i) for i in range(3)]
    await queue(cluster, "n1").PublishBatch(api.PublishBatchRequest(topic="t", messages=batch), timeout=RPC_TIMEOUT)
    answers = await asyncio.gather(*polls)
    assert sorted(d.raw for a in answers for d in a.messages) == [b"0", b"1", b"2"]
    assert sorted(len(a.messages) for a in answers) == [0, 0, 1, 1, 1]


async def test_waiting_long_polls_are_served_in_the_order_they_began_waiting(cluster: ServiceCluster) -> None:
    polls = []
    for i in range(3):
        polls.append(poll(queue(cluster, "n3"), "t", f"w{i}", wait=15))
        await waiting_polls(cluster, "n3", "t", i + 1)
    for i, waits in enumerate(polls):
        await publish(queue(cluster, "n1"), "t", b"%d" % i)
        got = await asyncio.wait_for(waits, RPC_TIMEOUT)
        assert [d.raw for d in got.messages] == [b"%d" % i]


async def test_a_passed_visibility_timeout_redelivers_with_delivery_count_two(cluster: ServiceCluster) -> None:
    await publish(queue(cluster, "n1"), "t", b"slow")
    (first,) = await consume(queue(cluster, "n1"), "t", visibility_timeout=0.2)
    (again,) = await consume(queue(cluster, "n2"), "t", wait_timeout=15)
    assert (again.id, again.delivery_count) == (first.id, 2)
    # The first consumer was too slow: its receipt no longer settles the message.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        stale_ack = api.AckRequest(topic="t", id=first.id, receipt=first.receipt)
        await queue(cluster, "n1").Ack(stale_ack, timeout=RPC_TIMEOUT)
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "receipt: stale" in str(stale.value.details())


async def test_extend_visibility_keeps_a_message_from_a_slow_consumer(cluster: ServiceCluster) -> None:
    await publish(queue(cluster, "n1"), "t", b"slow")
    (held,) = await consume(queue(cluster, "n1"), "t", visibility_timeout=0.5)
    await queue(cluster, "n2").ExtendVisibility(
        api.ExtendVisibilityRequest(topic="t", id=held.id, receipt=held.receipt, visibility_timeout=60),
        timeout=RPC_TIMEOUT,
    )
    assert await consume(queue(cluster, "n3"), "t", wait_timeout=1) == []
    assert (await stats(queue(cluster, "n3"), "t")).in_flight_by_consumer == {"worker": 1}


async def test_nack_with_a_delay_redelivers_after_it(cluster: ServiceCluster) -> None:
    await publish(queue(cluster, "n1"), "t", b"retry me")
    (first,) = await consume(queue(cluster, "n1"), "t")
    loop = asyncio.get_running_loop()
    nacked = await queue(cluster, "n2").Nack(api.NackRequest(topic="t", id=first.id, delay=0.4), timeout=RPC_TIMEOUT)
    started = loop.time()
    assert nacked == api.NackResponse()
    assert (await stats(queue(cluster, "n3"), "t")).delayed == 1
    assert await consume(queue(cluster, "n3"), "t") == []
    (again,) = await consume(queue(cluster, "n3"), "t", wait_timeout=15)
    # Time in the log is the leader's: it cannot run ahead of the wall clock (the margin
    # covers the clock entry that preceded the nack).
    assert loop.time() - started >= 0.25
    assert (again.id, again.delivery_count) == (first.id, 2)


async def test_a_message_out_of_deliveries_goes_to_the_dead_letter_topic(cluster: ServiceCluster) -> None:
    await publish(queue(cluster, "n1"), "jobs", b"poison", max_deliveries=1, id="p-1")
    (delivery,) = await consume(queue(cluster, "n2"), "jobs")
    nacked = await queue(cluster, "n3").Nack(api.NackRequest(topic="jobs", id=delivery.id), timeout=RPC_TIMEOUT)
    assert nacked.dead_lettered
    counts = await stats(queue(cluster, "n1"), "jobs")
    assert (counts.ready, counts.in_flight, counts.dead_lettered) == (0, 0, 1)
    (dead,) = await consume(queue(cluster, "n1"), "jobs.dlq")
    assert (dead.id, dead.raw, dead.delivery_count) == ("p-1", b"poison", 1)


async def test_stats_counts_by_state_linearizably_on_any_node(cluster: ServiceCluster) -> None:
    for i in range(3):
        await publish(queue(cluster, "n1"), "t", str(i).encode())
    await publish(queue(cluster, "n1"), "t", b"later", delay=600)
    await consume(queue(cluster, "n2"), "t")
    for nid in ("n1", "n2", "n3"):
        counts = await stats(queue(cluster, nid), "t")
        assert (counts.ready, counts.in_flight, counts.delayed) == (2, 1, 1), nid
        assert counts.in_flight_by_consumer == {"worker": 1} and counts.oldest_age >= 0
    local = await queue(cluster, "n3").Stats(
        api.StatsRequest(topic="t", consistency=common_pb2.CONSISTENCY_LOCAL), timeout=RPC_TIMEOUT
    )
    assert local.ready + local.in_flight + local.delayed <= 4


async def test_acking_an_unknown_id_is_not_found(cluster: ServiceCluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await queue(cluster, "n2").Ack(api.AckRequest(topic="t", id="dad11f12fd336e4d"), timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "id: no message 'dad11f12fd336e4d' in topic 't'" in str(error.value.details())


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Publish", api.PublishRequest(raw=b"x"), "topic: required"),
        ("Publish", api.PublishRequest(topic="bad topic", raw=b"x"), "topic:"),
        ("Publish", api.PublishRequest(topic="t"), "data: required"),
        ("Publish", api.PublishRequest(topic="t", data=struct_pb2.Value()), "data: holds no value"),
        ("Publish", api.PublishRequest(topic="t", data=value({"n": [float("nan")]})), "data['n'][0]: nan is not"),
        ("Publish", api.PublishRequest(topic="t", data=value({"n": [1.0]}), delay=-1), "delay:"),
        ("Publish", api.PublishRequest(topic="t", raw=b"x" * (256 * 1024 + 1)), "raw: 262145 bytes"),
        ("Publish", api.PublishRequest(topic="t", raw=b"x", id="0123456789abcdef-7"), "id:"),
        ("Publish", api.PublishRequest(topic="t", raw=b"x", max_deliveries=1001), "max_deliveries:"),
        ("PublishBatch", api.PublishBatchRequest(topic="t"), "messages: 0 messages"),
        (
            "PublishBatch",
            api.PublishBatchRequest(topic="t", messages=[api.PublishBatchRequest.Entry(raw=b"x", delay=901)]),
            "messages[0].delay:",
        ),
        ("Consume", api.ConsumeRequest(topic="t"), "consumer: required"),
        ("Consume", api.ConsumeRequest(topic="t", consumer="c", wait_timeout=21), "wait_timeout: 21 s; at most 20 s"),
        ("Consume", api.ConsumeRequest(topic="t", consumer="c", visibility_timeout=-0.5), "visibility_timeout:"),
        ("Consume", api.ConsumeRequest(topic="t", consumer="c", wait_timeout=float("nan")), "wait_timeout:"),
        ("Consume", api.ConsumeRequest(topic="t", consumer="c", max_messages=1001), "max_messages:"),
        ("Ack", api.AckRequest(topic="t"), "id: required"),
        ("Ack", api.AckRequest(topic="t", id="a", receipt="not-hex"), "receipt:"),
        ("Nack", api.NackRequest(topic="t", id="a", delay=10_000), "delay:"),
        ("ExtendVisibility", api.ExtendVisibilityRequest(topic="t", id="a"), "visibility_timeout: required"),
        ("Stats", api.StatsRequest(topic="t", consistency=7), "consistency:"),  # type: ignore[arg-type]
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    cluster: ServiceCluster, method: str, request_: object, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(queue(cluster, "n1"), method)(request_, timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error.value.details()).startswith(field), error.value.details()


async def test_a_retried_write_with_the_same_header_is_applied_once(cluster: ServiceCluster) -> None:
    header = common_pb2.RequestHeader(client_id="sdk-1", sequence=1)
    first = await publish(queue(cluster, "n1"), "t", b"once", header=header)
    again = await publish(queue(cluster, "n2"), "t", b"once", header=header)
    assert again == first and not again.duplicate  # the first answer, not a second message
    assert (await stats(queue(cluster, "n3"), "t")).ready == 1
    take = api.ConsumeRequest(topic="t", consumer="w", header=common_pb2.RequestHeader(client_id="sdk-1", sequence=2))
    delivered = await queue(cluster, "n3").Consume(take, timeout=RPC_TIMEOUT)
    assert await queue(cluster, "n1").Consume(take, timeout=RPC_TIMEOUT) == delivered
    assert [d.delivery_count for d in delivered.messages] == [1]


async def test_a_leader_crash_mid_run_loses_no_acknowledged_publish() -> None:
    async with service_cluster(
        register=[add_queue_service], components=lambda: {"queue": QueueMachine()}, propose_timeout=1.0
    ) as cluster:
        leader = (await cluster.raft.leader()).id
        acknowledged: list[bytes] = []

        async def publisher() -> None:
            for i in range(30):
                request = api.PublishRequest(
                    header=common_pb2.RequestHeader(client_id="publisher", sequence=i + 1), topic="t", raw=b"%d" % i
                )
                await retry(cluster, lambda stub: stub.Publish(request, timeout=2))
                acknowledged.append(request.raw)

        task = asyncio.create_task(publisher())
        await eventually(lambda: len(acknowledged) >= 10, "ten publishes acknowledged")
        await cluster.crash(leader)
        await task
        await cluster.raft.leader()
        await cluster.start(leader)  # back, caught up from its log
        survivor = queue(cluster, leader)
        assert (await retry(cluster, lambda stub: stub.Stats(api.StatsRequest(topic="t"), timeout=2))).ready == 30
        got = await consume(survivor, "t", max_messages=100)
        # Every acknowledged publish, in order, each once: retries carried the same header.
        assert [d.raw for d in got] == acknowledged


async def retry(cluster: ServiceCluster, call: Callable[[Stub], Awaitable[Answer]]) -> Answer:
    """Call each running node in turn until one answers, as a client would after UNAVAILABLE."""
    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        for nid in list(cluster.nodes):
            try:
                return await call(queue(cluster, nid))
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in retryable or loop.time() > deadline:
                    raise
            except asyncio.CancelledError:
                if nid in cluster.nodes:
                    raise
                # The harness closed the crashed node's channel under the call: for a real
                # client, a connection reset (UNAVAILABLE).
        await asyncio.sleep(0.05)  # everyone is electing: give it a moment
