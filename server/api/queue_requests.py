"""Public QueueService requests -> the queue's log commands, every field checked first.

A bad request fails here, before anything is proposed, with INVALID_ARGUMENT naming the
field as the client spelled it.  The rules themselves live in `server.fsm.queue_rules`,
which the state machine applies again; this module adds what only the public API has:
seconds as doubles, JSON values, opaque receipts, and the long poll's wait.
"""

from __future__ import annotations

import math

from dsync.fsm.v1 import queue_pb2
from dsync.v1 import common_pb2
from dsync.v1 import queue_pb2 as api
from server.api.errors import invalid
from server.fsm.json_values import json_value_problem
from server.fsm import queue_rules as rules

Payload = api.PublishRequest | api.PublishBatchRequest.Entry


def check_topic(topic: str) -> None:
    problem = rules.topic_problem(topic)
    if problem is not None:
        raise invalid("topic", problem)


def check_consistency(consistency: common_pb2.Consistency.ValueType) -> None:
    if consistency not in common_pb2.Consistency.values():
        raise invalid("consistency", f"unknown value {consistency}; use LINEARIZABLE (default) or LOCAL")


def publish(request: api.PublishRequest) -> queue_pb2.QueueCommand:
    check_topic(request.topic)
    command = queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic=request.topic))
    _add_message(command.publish, request, "")
    return command


def publish_batch(request: api.PublishBatchRequest) -> queue_pb2.QueueCommand:
    check_topic(request.topic)
    if not 1 <= len(request.messages) <= rules.MAX_BATCH_MESSAGES:
        raise invalid("messages", f"{len(request.messages)} messages; send 1 to {rules.MAX_BATCH_MESSAGES}")
    command = queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic=request.topic))
    for position, entry in enumerate(request.messages):
        _add_message(command.publish, entry, f"messages[{position}].")
    total = sum(len(m.json or m.raw) for m in command.publish.messages)
    if total > rules.MAX_BATCH_BYTES:
        raise invalid("messages", f"{total} payload bytes in all; at most {rules.MAX_BATCH_BYTES}: split the batch")
    return command


def consume(request: api.ConsumeRequest) -> tuple[queue_pb2.QueueCommand, float]:
    """The Consume command and how long to wait for a message, in seconds."""
    check_topic(request.topic)
    _check("consumer", rules.consumer_problem(request.consumer))
    if request.max_messages > rules.MAX_CONSUME_MESSAGES:
        raise invalid("max_messages", f"{request.max_messages}; at most {rules.MAX_CONSUME_MESSAGES} (0 means 1)")
    command = queue_pb2.QueueCommand(
        consume=queue_pb2.QueueConsume(
            topic=request.topic,
            consumer=request.consumer,
            max_messages=request.max_messages,
            visibility_timeout_ms=_millis("visibility_timeout", request.visibility_timeout, rules.MAX_VISIBILITY_MS),
        )
    )
    return command, _millis("wait_timeout", request.wait_timeout, rules.MAX_WAIT_MS) / 1000


def ack(request: api.AckRequest) -> queue_pb2.QueueCommand:
    return queue_pb2.QueueCommand(ack=_settle(request))


def nack(request: api.NackRequest) -> queue_pb2.QueueCommand:
    return queue_pb2.QueueCommand(
        nack=queue_pb2.QueueNack(message=_settle(request), delay_ms=_millis("delay", request.delay, rules.MAX_DELAY_MS))
    )


def extend(request: api.ExtendVisibilityRequest) -> queue_pb2.QueueCommand:
    settle = _settle(request)
    timeout_ms = _millis("visibility_timeout", request.visibility_timeout, rules.MAX_VISIBILITY_MS)
    if timeout_ms == 0:
        raise invalid("visibility_timeout", "required: seconds from now, more than 0 (to make it ready now, Nack it)")
    return queue_pb2.QueueCommand(extend=queue_pb2.QueueExtend(message=settle, visibility_timeout_ms=timeout_ms))


# ---------------------------------------------------------------------- fields


def _check(field: str, problem: str | None) -> None:
    if problem is not None:
        raise invalid(field, problem)


def _millis(field: str, seconds: float, limit_ms: int) -> int:
    """Seconds as whole milliseconds; a positive value never rounds down to 0 (0 means default)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise invalid(field, f"{seconds} is not a number of seconds >= 0")
    if seconds * 1000 > limit_ms:
        raise invalid(field, f"{seconds:g} s; at most {limit_ms / 1000:g} s")
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def _add_message(publish: queue_pb2.QueuePublish, request: Payload, prefix: str) -> None:
    _check(prefix + "id", rules.new_id_problem(request.id))
    if request.max_deliveries > rules.MAX_MAX_DELIVERIES:
        raise invalid(
            prefix + "max_deliveries", f"{request.max_deliveries}; at most {rules.MAX_MAX_DELIVERIES} (0 means 5)"
        )
    message = publish.messages.add(
        id=request.id,
        delay_ms=_millis(prefix + "delay", request.delay, rules.MAX_DELAY_MS),
        max_deliveries=request.max_deliveries,
    )
    kind = request.WhichOneof("payload")
    if kind == "data":
        problem = json_value_problem(request.data)
        if problem is not None:
            raise invalid(prefix + "data" + problem[0], problem[1])
        message.json = request.data.SerializeToString(deterministic=True)
    elif kind == "raw":
        message.raw = request.raw
    else:
        raise invalid(prefix + "data", "required: any JSON value (data), or bytes (raw)")
    size = len(message.json or message.raw)
    if size > rules.MAX_PAYLOAD_BYTES:
        raise invalid(prefix + kind, f"{size} bytes serialized; at most {rules.MAX_PAYLOAD_BYTES}")


def _settle(request: api.AckRequest | api.NackRequest | api.ExtendVisibilityRequest) -> queue_pb2.QueueSettle:
    check_topic(request.topic)
    _check("id", rules.message_id_problem(request.id))
    receipt = rules.parse_receipt(request.receipt)
    if receipt is None:
        raise invalid("receipt", f"{request.receipt!r} is not a receipt: pass Delivery.receipt as Consume returned it")
    return queue_pb2.QueueSettle(topic=request.topic, id=request.id, receipt=receipt)
