"""QueueService calls, and what their answers mean in Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dsync.v1 import queue_pb2

from .ops import ConsistencyName, Op, consistency, method
from .values import Body, from_value, to_value

PUBLISH = method(queue_pb2.DESCRIPTOR, "QueueService", "Publish", queue_pb2.PublishResponse)
PUBLISH_BATCH = method(queue_pb2.DESCRIPTOR, "QueueService", "PublishBatch", queue_pb2.PublishBatchResponse)
CONSUME = method(queue_pb2.DESCRIPTOR, "QueueService", "Consume", queue_pb2.ConsumeResponse)
ACK = method(queue_pb2.DESCRIPTOR, "QueueService", "Ack", queue_pb2.AckResponse)
NACK = method(queue_pb2.DESCRIPTOR, "QueueService", "Nack", queue_pb2.NackResponse)
EXTEND = method(queue_pb2.DESCRIPTOR, "QueueService", "ExtendVisibility", queue_pb2.ExtendVisibilityResponse)
STATS = method(queue_pb2.DESCRIPTOR, "QueueService", "Stats", queue_pb2.StatsResponse)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish.  `body` is JSON, or bytes for a raw body; `id` makes the
    publish idempotent; `max_deliveries` 0 means the server's default (5)."""

    body: Body
    id: str = ""
    delay: float = 0.0
    max_deliveries: int = 0


@dataclass(frozen=True)
class Published:
    """The message's id (given or assigned); `duplicate` when that id was already there."""

    id: str
    duplicate: bool


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message: settle it with its `receipt`."""

    topic: str
    id: str
    body: Body
    delivery_count: int
    receipt: str


@dataclass(frozen=True)
class QueueStats:
    ready: int
    in_flight: int
    delayed: int
    dead_lettered: int
    oldest_age: float
    in_flight_by_consumer: dict[str, int] = field(default_factory=dict)


def _entry(message: Outgoing) -> queue_pb2.PublishBatchRequest.Entry:
    entry = queue_pb2.PublishBatchRequest.Entry(
        id=message.id, delay=message.delay, max_deliveries=message.max_deliveries
    )
    if isinstance(message.body, bytes):
        entry.raw = message.body
    else:
        entry.data.CopyFrom(to_value(message.body))
    return entry


def _published(results: Sequence[queue_pb2.PublishResponse]) -> list[Published]:
    return [Published(r.id, r.duplicate) for r in results]


def publish(topic: str, message: Outgoing) -> Op[queue_pb2.PublishResponse, Published]:
    entry = _entry(message)
    request = queue_pb2.PublishRequest(topic=topic, id=entry.id, delay=entry.delay, max_deliveries=entry.max_deliveries)
    if entry.HasField("raw"):
        request.raw = entry.raw
    else:
        request.data.CopyFrom(entry.data)
    return Op(PUBLISH, request, lambda r: Published(r.id, r.duplicate))


def publish_batch(topic: str, messages: Sequence[Outgoing]) -> Op[queue_pb2.PublishBatchResponse, list[Published]]:
    """All of `messages` in one log entry: all are published or none."""
    request = queue_pb2.PublishBatchRequest(topic=topic, messages=[_entry(m) for m in messages])
    return Op(PUBLISH_BATCH, request, lambda r: _published(r.results))


def _delivery(topic: str, d: queue_pb2.Delivery) -> Delivery:
    body: Body = d.raw if d.WhichOneof("payload") == "raw" else from_value(d.data)
    return Delivery(topic, d.id, body, d.delivery_count, d.receipt)


def consume(
    topic: str,
    consumer: str,
    max_messages: int,
    visibility_timeout: float,
    wait: float,
) -> Op[queue_pb2.ConsumeResponse, list[Delivery]]:
    request = queue_pb2.ConsumeRequest(
        topic=topic,
        consumer=consumer,
        max_messages=max_messages,
        visibility_timeout=visibility_timeout,
        wait_timeout=wait,
    )
    return Op(CONSUME, request, lambda r: [_delivery(topic, d) for d in r.messages], wait=wait)


def ack(topic: str, id: str, receipt: str) -> Op[queue_pb2.AckResponse, None]:
    request = queue_pb2.AckRequest(topic=topic, id=id, receipt=receipt)
    return Op(ACK, request, lambda r: None)


def nack(topic: str, id: str, receipt: str, delay: float) -> Op[queue_pb2.NackResponse, bool]:
    """True when the message's deliveries were used up and it moved to `<topic>.dlq`."""
    request = queue_pb2.NackRequest(topic=topic, id=id, receipt=receipt, delay=delay)
    return Op(NACK, request, lambda r: r.dead_lettered)


def extend(
    topic: str, id: str, receipt: str, visibility_timeout: float
) -> Op[queue_pb2.ExtendVisibilityResponse, None]:
    request = queue_pb2.ExtendVisibilityRequest(
        topic=topic, id=id, receipt=receipt, visibility_timeout=visibility_timeout
    )
    return Op(EXTEND, request, lambda r: None)


def stats(topic: str, read: ConsistencyName) -> Op[queue_pb2.StatsResponse, QueueStats]:
    request = queue_pb2.StatsRequest(topic=topic, consistency=consistency(read))
    return Op(
        STATS,
        request,
        lambda r: QueueStats(
            r.ready, r.in_flight, r.delayed, r.dead_lettered, r.oldest_age, dict(r.in_flight_by_consumer)
        ),
    )


MAX_NACK_DELAY = 900.0  # queue.proto's limit


def nack_delay(delivery_count: int, base: float, cap: float) -> float:
    """How long a failed message rests before its next delivery: doubling per delivery."""
    return min(cap, MAX_NACK_DELAY, base * 2.0 ** max(0, delivery_count - 1))


def as_outgoing(item: Body | Outgoing) -> Outgoing:
    return item if isinstance(item, Outgoing) else Outgoing(item)
