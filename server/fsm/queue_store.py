"""The queue's state and its bookkeeping: topics, timers, remembered ids, totals.

`QueueStore` keeps the derived structures (ready heaps, the timer heap, counters) in
step with the messages, so that the rules in `server.fsm.queue` read as rules.  Its
snapshot holds the messages and remembered ids only; the heaps and counters are rebuilt
from them.  That is sound because the heaps are lazy: an entry is acted on only if it
still matches its message, so stale entries change nothing that can be observed, and a
store rebuilt from a snapshot behaves exactly like the original.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

from dsync.fsm.v1 import queue_pb2

READY = queue_pb2.QUEUE_MESSAGE_STATE_READY
IN_FLIGHT = queue_pb2.QUEUE_MESSAGE_STATE_IN_FLIGHT
DELAYED = queue_pb2.QUEUE_MESSAGE_STATE_DELAYED
State: TypeAlias = "queue_pb2.QueueMessageState.ValueType"

# Stale timer entries (acked or extended messages) are dropped once they outnumber the
# live ones by this much: memory stays proportional to the messages held.  The same goes
# for a topic's stale ready entries (messages settled while ready, behind the head).
_TIMER_SLACK = 1024
_READY_SLACK = 1024


@dataclass(slots=True)
class Message:
    id: str
    seq: int  # order of entry into its topic, unique across topics; ready ones go out lowest first
    payload: bytes  # a serialized google.protobuf.Value if `json`, else the raw bytes
    json: bool
    max_deliveries: int
    entered_ms: int  # when it entered its topic (published, or dead-lettered into it)
    state: State = READY
    deliveries: int = 0
    due_ms: int = 0  # IN_FLIGHT: its visibility deadline; DELAYED: when it becomes ready
    wait_ms: int = 0  # IN_FLIGHT or DELAYED before its time starts: see QueueStore.start
    receipt: int = 0  # log index of its latest delivery; 0 before the first
    consumer: str = ""  # its holder while IN_FLIGHT


class Topic:
    """One topic's messages, in seq order, with what delivery and Stats need at hand."""

    __slots__ = ("name", "messages", "_ready", "counts", "holders")

    def __init__(self, name: str) -> None:
        self.name = name
        # Insertion order is seq order: messages only ever enter a topic with a new seq.
        self.messages: OrderedDict[str, Message] = OrderedDict()
        self._ready: list[tuple[int, str]] = []  # heap of (seq, id); lazy, see the module doc
        self.counts: Counter[State] = Counter()
        self.holders: Counter[str] = Counter()  # in-flight messages per consumer

    def next_ready(self) -> Message | None:
        """The ready message to deliver next, or None; the caller changes its state."""
        ready = self._ready
        while ready:
            seq, message_id = ready[0]
            message = self.messages.get(message_id)
            if message is not None and message.seq == seq and message.state == READY:
                return message
            heapq.heappop(ready)
        return None

    def enter(self, message: Message) -> None:
        """Count a message held in its current state (and queue it for delivery if ready)."""
        self._count(message, 1)
        if message.state == READY:
            heapq.heappush(self._ready, (message.seq, message.id))
            if len(self._ready) > 2 * self.counts[READY] + _READY_SLACK:
                # Messages enter in seq order, so this list is sorted: already a heap.
                self._ready = [(m.seq, m.id) for m in self.messages.values() if m.state == READY]

    def leave(self, message: Message) -> None:
        """Stop counting a message in its current state.

        A ready message leaving from the head of the heap -- the one being delivered --
        takes its entry along: left there, it would still match the message once it is
        ready again, and every redelivery would add another such entry for good.  Any
        other ready entry just goes stale (see the module doc).
        """
        self._count(message, -1)
        ready = self._ready
        if message.state == READY and ready and ready[0] == (message.seq, message.id):
            heapq.heappop(ready)

    def _count(self, message: Message, sign: int) -> None:
        self.counts[message.state] += sign
        if message.state == IN_FLIGHT:
            self.holders[message.consumer] += sign
            if not self.holders[message.consumer]:
                del self.holders[message.consumer]


class QueueStore:
    def __init__(self) -> None:
        self.next_seq = 0
        self.topics: dict[str, Topic] = {}
        # (due_ms, seq, topic, id) of in-flight and delayed messages; lazy, see the module doc.
        self._timers: list[tuple[int, int, str, str]] = []
        # (topic, id) of messages whose `wait_ms` starts at the next clock entry; lazy too.
        self._starting: list[tuple[str, str]] = []
        # (topic, id) -> when its message was settled; oldest first, as time only grows.
        self.settled: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.message_count = 0
        self.stored_bytes = 0

    # ------------------------------------------------------------------ messages

    def find(self, topic: str, message_id: str) -> tuple[Topic, Message] | None:
        holder = self.topics.get(topic)
        if holder is None or message_id not in holder.messages:
            return None
        return holder, holder.messages[message_id]

    def add(self, topic: str, message: Message) -> None:
        """Put a new message (its seq from `take_seq`) into `topic`, in the state it carries."""
        target = self.topics.get(topic)
        if target is None:
            target = self.topics[topic] = Topic(topic)
        target.messages[message.id] = message
        self.message_count += 1
        self.stored_bytes += len(message.payload)
        target.enter(message)
        self._timed(target, message)

    def remove(self, topic: Topic, message: Message) -> None:
        """Take a message out for good; a topic left empty is forgotten."""
        topic.leave(message)
        del topic.messages[message.id]
        self.message_count -= 1
        self.stored_bytes -= len(message.payload)
        if not topic.messages:
            del self.topics[topic.name]

    def move(self, topic: Topic, message: Message, state: State, wait_ms: int = 0, consumer: str = "") -> None:
        """Change a message's state (and holder) with every index kept in step; a timed
        state (in flight, delayed) lasts `wait_ms` from the next `start`."""
        topic.leave(message)
        message.state = state
        message.due_ms = 0
        message.wait_ms = wait_ms
        message.consumer = consumer
        topic.enter(message)
        self._timed(topic, message)

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    # ------------------------------------------------------------------ time

    def start(self, now_ms: int) -> None:
        """Start the waits set since time last moved: they end `wait_ms` after `now_ms`.

        State-machine time is the latest clock reading, taken before the command that set
        the wait -- up to a clock interval before, even before its client sent it.
        Counting from that reading would end a visibility timeout early by the client's
        own reckoning, so an ack sent in time would find the message delivered again;
        counting from the next reading never ends it early.
        """
        starting, self._starting = self._starting, []
        for topic_name, message_id in starting:
            found = self.find(topic_name, message_id)
            if found is None or not found[1].wait_ms:
                continue  # settled, made ready, or listed twice: nothing waits any more
            topic, message = found
            message.due_ms = now_ms + message.wait_ms
            message.wait_ms = 0
            self._timed(topic, message)

    def _timed(self, topic: Topic, message: Message) -> None:
        if message.wait_ms:
            self._starting.append((topic.name, message.id))
        elif message.state in (IN_FLIGHT, DELAYED):
            heapq.heappush(self._timers, (message.due_ms, message.seq, topic.name, message.id))
            if len(self._timers) > 2 * self.message_count + _TIMER_SLACK:
                self._timers = [entry for entry in self._timers if self._current(entry) is not None]
                heapq.heapify(self._timers)

    def _current(self, entry: tuple[int, int, str, str]) -> tuple[Topic, Message] | None:
        due_ms, seq, topic, message_id = entry
        found = self.find(topic, message_id)
        if found is None:
            return None
        message = found[1]
        if message.seq != seq or message.due_ms != due_ms or message.state not in (IN_FLIGHT, DELAYED):
            return None
        return found

    def due(self, now_ms: int) -> Iterator[tuple[Topic, Message]]:
        """In-flight and delayed messages whose time has come, earliest first.

        The caller must move each one out of its timed state before taking the next.
        """
        while self._timers and self._timers[0][0] <= now_ms:
            found = self._current(heapq.heappop(self._timers))
            if found is not None:
                yield found

    # ------------------------------------------------------------------ remembered ids

    def settle(self, topic: str, message_id: str, now_ms: int, limit: int) -> None:
        """Remember a client-chosen id as recently used; the oldest beyond `limit` are forgotten."""
        key = (topic, message_id)
        self.settled.pop(key, None)
        self.settled[key] = now_ms
        while len(self.settled) > limit:
            self.settled.popitem(last=False)

    def forget_settled(self, before_ms: int) -> None:
        """Forget ids settled at or before `before_ms`."""
        settled = self.settled
        while settled and next(iter(settled.values())) <= before_ms:
            settled.popitem(last=False)

    # ------------------------------------------------------------------ snapshot

    def encode(self) -> bytes:
        snap = queue_pb2.QueueSnapshot(next_seq=self.next_seq)
        for name in sorted(self.topics):
            state = snap.topics.add(name=name)
            for m in self.topics[name].messages.values():
                stored = state.messages.add(
                    id=m.id,
                    seq=m.seq,
                    max_deliveries=m.max_deliveries,
                    entered_ms=m.entered_ms,
                    deliveries=m.deliveries,
                    state=m.state,
                    due_ms=m.due_ms,
                    receipt=m.receipt,
                    consumer=m.consumer,
                    wait_ms=m.wait_ms,
                )
                if m.json:
                    stored.json = m.payload
                else:
                    stored.raw = m.payload
        for (topic, message_id), settled_ms in self.settled.items():
            snap.settled.add(topic=topic, id=message_id, settled_ms=settled_ms)
        return snap.SerializeToString(deterministic=True)

    @classmethod
    def decode(cls, data: bytes) -> QueueStore:
        """The store a snapshot describes; raises DecodeError if it is not a queue snapshot."""
        snap = queue_pb2.QueueSnapshot.FromString(data)
        store = cls()
        store.next_seq = snap.next_seq
        for state in snap.topics:
            for m in state.messages:
                store.add(
                    state.name,
                    Message(
                        id=m.id,
                        seq=m.seq,
                        payload=m.json if m.WhichOneof("payload") == "json" else m.raw,
                        json=m.WhichOneof("payload") == "json",
                        max_deliveries=m.max_deliveries,
                        entered_ms=m.entered_ms,
                        state=m.state,
                        deliveries=m.deliveries,
                        due_ms=m.due_ms,
                        receipt=m.receipt,
                        consumer=m.consumer,
                        wait_ms=m.wait_ms,
                    ),
                )
        for entry in snap.settled:
            store.settled[(entry.topic, entry.id)] = entry.settled_ms
        return store
