"""The queue state machine: FIFO topics with at-least-once delivery and dead-lettering.

The rules (the public contract is documented in protos/dsync/v1/queue.proto):
- Order: ready messages go out lowest `seq` first, and a message's seq is fixed when it
  enters a topic, so a redelivered message keeps its place ahead of later publishes
  (SQS and quorum-queue users expect a retry soon, not behind the whole backlog).
- Ids: a client-chosen id is unique in its topic while the message lives and for
  DEDUP_WINDOW_MS after it is settled, which makes publishing idempotent; otherwise the
  id is `assigned_id(log index, position in batch)`, unique because an index is used once.
- Receipts: each delivery's receipt is the log index of the Consume that made it.  A
  settle naming an older receipt is refused, so a consumer whose visibility timeout
  passed cannot ack a message someone else now holds; no receipt matches any delivery.
- Dead letters: a message whose `max_deliveries` are used up moves to its dead-letter
  topic when it times out or is nacked, in that same log entry, under a new seq (it
  joins the back) and its own id, unless that id is taken there (then `renamed_id`).
  Moving never fails and never loses the message: limits apply to publishing only.
- Time: visibility deadlines and delays fall due in `advance`, when a Clock entry moves
  state-machine time; nothing here reads a clock.  Each starts at the first clock entry
  after its command, never at the stale reading before it (see QueueStore.start).

Each time messages become ready in a topic, `MessagesReady` is emitted so long polls on
that topic wake up and consume again; the state machine keeps no waiters.  After a
restore the router wakes every waiting RPC instead (`StateRestored`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from dsync.fsm.v1 import queue_pb2
from dsync.v1 import queue_pb2 as api
from server.fsm import queue_rules as rules
from server.fsm.base import ApplyContext, Code, Refusal, Result
from server.fsm.json_values import json_value_problem
from server.fsm.queue_store import DELAYED, IN_FLIGHT, READY, Message, QueueStore, Topic


@dataclass(frozen=True, slots=True)
class MessagesReady:
    """Messages became ready in `topic`: a long poll waiting on it should consume again."""

    topic: str

    @property
    def key(self) -> tuple[str, str]:
        return ready_key(self.topic)


def ready_key(topic: str) -> tuple[str, str]:
    """The EventHub key of `MessagesReady` for `topic`."""
    return ("queue", topic)


def _invalid(field: str, problem: str) -> Refusal:
    return Refusal(Code.INVALID_ARGUMENT, f"{field}: {problem}")


class QueueMachine:
    """Implements `server.fsm.base.Component` for Command.queue.

    `redeliveries` and `dead_lettered` count what this process has seen applied (not
    part of the snapshot), for metrics.
    """

    def __init__(self) -> None:
        self._store = QueueStore()
        self.redeliveries = 0
        self.dead_lettered = 0

    # ------------------------------------------------------------------ Component

    def apply(self, command: bytes, ctx: ApplyContext) -> Result:
        try:
            cmd = queue_pb2.QueueCommand.FromString(command)
        except DecodeError:
            return Refusal(Code.INVALID_ARGUMENT, "not a queue command: it could not be decoded")
        op = cmd.WhichOneof("op")
        if op == "publish":
            return self._publish(cmd.publish, ctx)
        if op == "consume":
            return self._consume(cmd.consume, ctx)
        if op == "ack":
            return self._ack(cmd.ack, ctx)
        if op == "nack":
            return self._nack(cmd.nack, ctx)
        if op == "extend":
            return self._extend(cmd.extend, ctx)
        return Refusal(Code.INVALID_ARGUMENT, "queue command names no operation")

    def advance(self, ctx: ApplyContext) -> None:
        store = self._store
        store.start(ctx.now_ms)
        store.forget_settled(ctx.now_ms - rules.DEDUP_WINDOW_MS)
        woken: set[str] = set()
        for topic, message in store.due(ctx.now_ms):
            if message.state == IN_FLIGHT and _exhausted(topic, message):
                woken.add(self._dead_letter(topic, message, ctx))
            else:
                store.move(topic, message, READY)
                woken.add(topic.name)
        for name in sorted(woken):
            ctx.emit(MessagesReady(name))

    def snapshot(self) -> bytes:
        return self._store.encode()

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        store = QueueStore.decode(data)

        def install() -> None:
            self._store = store

        return install

    # ------------------------------------------------------------------ reads

    def ready_count(self, topic: str) -> int:
        """Messages of `topic` deliverable now (in this replica's state)."""
        found = self._store.topics.get(topic)
        return found.counts[READY] if found is not None else 0

    def totals(self) -> tuple[int, int, int]:
        """Messages (ready, in flight, delayed) over every topic, dead-letter topics included."""
        ready = in_flight = delayed = 0
        for topic in self._store.topics.values():
            counts = topic.counts
            ready += counts[READY]
            in_flight += counts[IN_FLIGHT]
            delayed += counts[DELAYED]
        return ready, in_flight, delayed

    def stats(self, topic: str, now_ms: int) -> api.StatsResponse:
        """`topic`'s counts in this replica's state, ages measured at `now_ms`."""
        response = api.StatsResponse()
        dead_letters = rules.dead_letter_topic(topic)
        if dead_letters is not None and dead_letters in self._store.topics:
            response.dead_lettered = len(self._store.topics[dead_letters].messages)
        found = self._store.topics.get(topic)
        if found is None:
            return response
        response.ready = found.counts[READY]
        response.in_flight = found.counts[IN_FLIGHT]
        response.delayed = found.counts[DELAYED]
        oldest = next(iter(found.messages.values()))
        response.oldest_age = max(0, now_ms - oldest.entered_ms) / 1000
        response.in_flight_by_consumer.update(found.holders)
        return response

    # ------------------------------------------------------------------ commands

    def _publish(self, cmd: queue_pb2.QueuePublish, ctx: ApplyContext) -> Result:
        refusal = _check_publish(cmd)
        if refusal is not None:
            return refusal
        store = self._store
        existing = store.topics.get(cmd.topic)
        response = api.PublishBatchResponse()
        fresh: list[Message] = []
        chosen: set[str] = set()
        for position, entry in enumerate(cmd.messages):
            if entry.id and (
                entry.id in chosen
                or (existing is not None and entry.id in existing.messages)
                or (cmd.topic, entry.id) in store.settled
            ):
                response.results.add(id=entry.id, duplicate=True)
                continue
            if entry.id:
                chosen.add(entry.id)
            message = _new_message(entry, entry.id or rules.assigned_id(ctx.index, position), ctx.now_ms)
            fresh.append(message)
            response.results.add(id=message.id)
        added = sum(len(m.payload) for m in fresh)
        if store.message_count + len(fresh) > rules.MAX_MESSAGES or store.stored_bytes + added > rules.MAX_STORED_BYTES:
            return Refusal(
                Code.RESOURCE_EXHAUSTED,
                f"the queue is full ({store.message_count} of {rules.MAX_MESSAGES} messages, "
                f"{store.stored_bytes} of {rules.MAX_STORED_BYTES} payload bytes): consume and ack "
                "messages before publishing more",
            )
        for message in fresh:
            message.seq = store.take_seq()
            store.add(cmd.topic, message)
        if any(m.state == READY for m in fresh):
            ctx.emit(MessagesReady(cmd.topic))
        return response

    def _consume(self, cmd: queue_pb2.QueueConsume, ctx: ApplyContext) -> Result:
        problem = (
            ("topic", rules.topic_problem(cmd.topic)),
            ("consumer", rules.consumer_problem(cmd.consumer)),
            ("max_messages", rules.range_problem(cmd.max_messages, rules.MAX_CONSUME_MESSAGES, "messages")),
            (
                "visibility_timeout",
                rules.range_problem(cmd.visibility_timeout_ms, rules.MAX_VISIBILITY_MS, "ms"),
            ),
        )
        for field, text in problem:
            if text is not None:
                return _invalid(field, text)
        limit = cmd.max_messages or 1
        visibility_ms = cmd.visibility_timeout_ms or rules.DEFAULT_VISIBILITY_MS
        response = api.ConsumeResponse()
        topic = self._store.topics.get(cmd.topic)
        taken_bytes = 0
        while topic is not None and len(response.messages) < limit:
            message = topic.next_ready()
            if message is None:
                break
            taken_bytes += len(message.payload)
            if response.messages and taken_bytes > rules.MAX_CONSUME_BYTES:
                break
            message.deliveries += 1
            if message.deliveries > 1:
                self.redeliveries += 1
            message.receipt = ctx.index
            self._store.move(topic, message, IN_FLIGHT, visibility_ms, cmd.consumer)
            _deliver(response.messages.add(), message)
        return response

    def _ack(self, cmd: queue_pb2.QueueSettle, ctx: ApplyContext) -> Result:
        found = self._held(cmd)
        if isinstance(found, Refusal):
            return found
        topic, message = found
        if message.deliveries == 0:
            return Refusal(
                Code.FAILED_PRECONDITION,
                f"id: message {message.id!r} in topic {topic.name!r} was never delivered: consume it first",
            )
        self._remove(topic, message, ctx.now_ms)
        return api.AckResponse()

    def _nack(self, cmd: queue_pb2.QueueNack, ctx: ApplyContext) -> Result:
        problem = rules.range_problem(cmd.delay_ms, rules.MAX_DELAY_MS, "ms")
        if problem is not None:
            return _invalid("delay", problem)
        found = self._in_flight(cmd.message)
        if isinstance(found, Refusal):
            return found
        topic, message = found
        if _exhausted(topic, message):
            ctx.emit(MessagesReady(self._dead_letter(topic, message, ctx)))
            return api.NackResponse(dead_lettered=True)
        if cmd.delay_ms:
            self._store.move(topic, message, DELAYED, cmd.delay_ms)
        else:
            self._store.move(topic, message, READY)
            ctx.emit(MessagesReady(topic.name))
        return api.NackResponse()

    def _extend(self, cmd: queue_pb2.QueueExtend, ctx: ApplyContext) -> Result:
        if cmd.visibility_timeout_ms == 0:
            return _invalid("visibility_timeout", "required: seconds from now, more than 0")
        problem = rules.range_problem(cmd.visibility_timeout_ms, rules.MAX_VISIBILITY_MS, "ms")
        if problem is not None:
            return _invalid("visibility_timeout", problem)
        found = self._in_flight(cmd.message)
        if isinstance(found, Refusal):
            return found
        topic, message = found
        self._store.move(topic, message, IN_FLIGHT, cmd.visibility_timeout_ms, message.consumer)
        return api.ExtendVisibilityResponse()

    # ------------------------------------------------------------------ helpers

    def _held(self, cmd: queue_pb2.QueueSettle) -> tuple[Topic, Message] | Refusal:
        """The message a settle names, if it exists and the receipt (if any) is its latest."""
        for field, problem in (
            ("topic", rules.topic_problem(cmd.topic)),
            ("id", rules.message_id_problem(cmd.id)),
        ):
            if problem is not None:
                return _invalid(field, problem)
        found = self._store.find(cmd.topic, cmd.id)
        if found is None:
            return Refusal(
                Code.NOT_FOUND,
                f"id: no message {cmd.id!r} in topic {cmd.topic!r}: it was acked or dead-lettered "
                "already, or never published there",
            )
        message = found[1]
        if cmd.receipt and cmd.receipt != message.receipt:
            return Refusal(
                Code.FAILED_PRECONDITION,
                f"receipt: stale; message {cmd.id!r} was delivered again since (delivery "
                f"{message.deliveries}, receipt {rules.format_receipt(message.receipt)}): that delivery's "
                "consumer settles it now",
            )
        return found

    def _in_flight(self, cmd: queue_pb2.QueueSettle) -> tuple[Topic, Message] | Refusal:
        found = self._held(cmd)
        if isinstance(found, Refusal):
            return found
        if found[1].state != IN_FLIGHT:
            return Refusal(
                Code.FAILED_PRECONDITION,
                f"id: message {cmd.id!r} is not in flight (never delivered, nacked, or its visibility "
                "timeout passed): consume it again first",
            )
        return found

    def _remove(self, topic: Topic, message: Message, now_ms: int) -> None:
        """Take a message out of its topic; a client-chosen id stays a duplicate for a while."""
        self._store.remove(topic, message)
        if not rules.is_assigned(message.id):
            self._store.settle(topic.name, message.id, now_ms, rules.MAX_SETTLED_IDS)

    def _dead_letter(self, topic: Topic, message: Message, ctx: ApplyContext) -> str:
        """Move an exhausted message to the back of its dead-letter topic; returns that topic."""
        target = rules.dead_letter_topic(topic.name)
        assert target is not None, "messages of a dead-letter topic are never exhausted"
        self.dead_lettered += 1
        self._remove(topic, message, ctx.now_ms)
        seq = self._store.take_seq()
        taken = self._store.find(target, message.id) is not None
        moved = Message(
            id=rules.renamed_id(ctx.index, seq) if taken else message.id,
            seq=seq,
            payload=message.payload,
            json=message.json,
            max_deliveries=message.max_deliveries,
            entered_ms=ctx.now_ms,
        )
        self._store.add(target, moved)
        return target


def _exhausted(topic: Topic, message: Message) -> bool:
    return message.deliveries >= message.max_deliveries and rules.dead_letter_topic(topic.name) is not None


def _new_message(entry: queue_pb2.QueueMessage, message_id: str, now_ms: int) -> Message:
    json = entry.WhichOneof("payload") == "json"
    return Message(
        id=message_id,
        seq=-1,  # given when it is stored: a refused batch must not use up numbers
        payload=entry.json if json else entry.raw,
        json=json,
        max_deliveries=entry.max_deliveries or rules.DEFAULT_MAX_DELIVERIES,
        entered_ms=now_ms,
        state=DELAYED if entry.delay_ms else READY,
        wait_ms=entry.delay_ms,
    )


def _deliver(delivery: api.Delivery, message: Message) -> None:
    delivery.id = message.id
    delivery.delivery_count = message.deliveries
    delivery.receipt = rules.format_receipt(message.receipt)
    if message.json:
        delivery.data.SetInParent()
        delivery.data.MergeFromString(message.payload)
    else:
        delivery.raw = message.payload


def _check_publish(cmd: queue_pb2.QueuePublish) -> Refusal | None:
    problem = rules.topic_problem(cmd.topic)
    if problem is not None:
        return _invalid("topic", problem)
    if not 1 <= len(cmd.messages) <= rules.MAX_BATCH_MESSAGES:
        return _invalid("messages", f"{len(cmd.messages)} messages; send 1 to {rules.MAX_BATCH_MESSAGES}")
    total = 0
    for position, entry in enumerate(cmd.messages):
        field = f"messages[{position}]"
        kind = entry.WhichOneof("payload")
        payload = entry.json if kind == "json" else entry.raw
        total += len(payload)
        for name, text in (
            ("id", rules.new_id_problem(entry.id)),
            ("data", None if kind is not None else "required: a JSON value (data) or bytes (raw)"),
            ("data", rules.range_problem(len(payload), rules.MAX_PAYLOAD_BYTES, "bytes")),
            ("data", _json_problem(payload) if kind == "json" else None),
            ("delay", rules.range_problem(entry.delay_ms, rules.MAX_DELAY_MS, "ms")),
            ("max_deliveries", rules.range_problem(entry.max_deliveries, rules.MAX_MAX_DELIVERIES, "deliveries")),
        ):
            if text is not None:
                return _invalid(f"{field}.{name}", text)
    if total > rules.MAX_BATCH_BYTES:
        return _invalid("messages", f"{total} payload bytes in all; at most {rules.MAX_BATCH_BYTES}: split the batch")
    return None


def _json_problem(payload: bytes) -> str | None:
    """Checked once at publish, so that delivering it (on every replica, and through the
    HTTP gateway) cannot fail."""
    try:
        value = struct_pb2.Value.FromString(payload)
    except DecodeError:
        return "not a serialized google.protobuf.Value"
    problem = json_value_problem(value)
    if problem is None:
        return None
    path, text = problem
    return f"at {path}: {text}" if path else text
