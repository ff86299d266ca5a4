"""A reference model of the queue, and the property test's engine.

The model states queue.proto's rules as plainly as possible -- one list of messages,
scanned; no heaps, no laziness, no counters -- so that it is easy to believe, and the
QueueMachine must agree with it on every result and count.  Alongside, replicas
restored from snapshots at random points must behave identically to the original, and
at the end every accepted message must have been delivered and the queue drained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hypothesis import strategies as st

from dsync.v1 import queue_pb2 as api
from server.fsm import queue_rules as rules
from server.fsm.base import Code, Refusal
from tests.fsm.queue_driver import Driver, entry

PUBLISH_TOPICS = ("a", "b", "a.dlq")
TOPICS = ("a", "b", "a.dlq", "b.dlq")
IDS = ("", "", "x", "y")  # "" twice: assigned ids are the common case
Receipt = Literal["none", "latest", "other"]


@dataclass
class Entry:
    topic: str
    id: str
    seq: int
    payload: bytes
    max_deliveries: int
    entered_ms: int
    state: str = "ready"
    deliveries: int = 0
    due_ms: int = 0  # once started; before, how long the wait lasts
    started: bool = True  # a wait starts at the next clock entry (advance)
    receipt: int = 0
    consumer: str = ""


@dataclass
class Model:
    live: list[Entry] = field(default_factory=list)
    settled: dict[tuple[str, str], int] = field(default_factory=dict)
    seq: int = 0

    def find(self, topic: str, message_id: str) -> Entry | None:
        return next((m for m in self.live if m.topic == topic and m.id == message_id), None)

    def publish(
        self, topic: str, entries: list[tuple[str, bytes, int, int]], index: int, now: int
    ) -> list[tuple[str, bool]]:
        results: list[tuple[str, bool]] = []
        for position, (message_id, payload, delay, max_deliveries) in enumerate(entries):
            if message_id and (self.find(topic, message_id) or (topic, message_id) in self.settled):
                results.append((message_id, True))
                continue
            new_id = message_id or f"{index:016x}-{position}"
            self.live.append(
                Entry(
                    topic, new_id, self.seq, payload, max_deliveries or 5, now,
                    state="delayed" if delay else "ready", due_ms=delay, started=not delay,
                )
            )
            self.seq += 1
            results.append((new_id, False))
        return results

    def consume(self, topic: str, n: int, visibility: int, index: int, now: int) -> list[tuple[str, bytes, int, str]]:
        ready = sorted((m for m in self.live if m.topic == topic and m.state == "ready"), key=lambda m: m.seq)
        out = []
        for m in ready[:n]:
            m.state, m.deliveries, m.receipt, m.consumer = "in_flight", m.deliveries + 1, index, "c"
            m.due_ms, m.started = visibility or 30_000, False
            out.append((m.id, m.payload, m.deliveries, f"{index:x}"))
        return out

    def check(self, topic: str, message_id: str, receipt: int, in_flight: bool) -> Code | Entry:
        m = self.find(topic, message_id)
        if m is None:
            return Code.NOT_FOUND
        if receipt and receipt != m.receipt:
            return Code.FAILED_PRECONDITION
        if (in_flight and m.state != "in_flight") or m.deliveries == 0:
            return Code.FAILED_PRECONDITION
        return m

    def remove(self, m: Entry, now: int) -> None:
        self.live.remove(m)
        if not rules.is_assigned(m.id):
            self.settled.pop((m.topic, m.id), None)
            self.settled[(m.topic, m.id)] = now

    def dead_letter(self, m: Entry, index: int, now: int) -> None:
        self.remove(m, now)
        target = m.topic + ".dlq"
        new_id = f"{index:016x}-d{self.seq}" if self.find(target, m.id) else m.id
        self.live.append(Entry(target, new_id, self.seq, m.payload, m.max_deliveries, now))
        self.seq += 1

    def exhausted(self, m: Entry) -> bool:
        return m.deliveries >= m.max_deliveries and not m.topic.endswith(".dlq")

    def ack(self, topic: str, message_id: str, receipt: int, now: int) -> Code | None:
        m = self.check(topic, message_id, receipt, in_flight=False)
        if isinstance(m, Code):
            return m
        self.remove(m, now)
        return None

    def nack(self, topic: str, message_id: str, receipt: int, delay: int, index: int, now: int) -> Code | bool:
        m = self.check(topic, message_id, receipt, in_flight=True)
        if isinstance(m, Code):
            return m
        if self.exhausted(m):
            self.dead_letter(m, index, now)
            return True
        m.state, m.due_ms, m.started, m.consumer = ("delayed", delay, False, "") if delay else ("ready", 0, True, "")
        return False

    def extend(self, topic: str, message_id: str, receipt: int, visibility: int, now: int) -> Code | None:
        m = self.check(topic, message_id, receipt, in_flight=True)
        if isinstance(m, Code):
            return m
        m.due_ms, m.started = visibility, False
        return None

    def advance(self, index: int, now: int) -> None:
        for m in self.live:
            if not m.started:
                m.due_ms, m.started = now + m.due_ms, True
        self.settled = {k: v for k, v in self.settled.items() if v > now - rules.DEDUP_WINDOW_MS}
        due = [m for m in self.live if m.state in ("in_flight", "delayed") and m.due_ms <= now]
        for m in sorted(due, key=lambda m: (m.due_ms, m.seq, m.topic, m.id)):
            if m.state == "in_flight" and self.exhausted(m):
                self.dead_letter(m, index, now)
            else:
                m.state, m.due_ms, m.consumer = "ready", 0, ""

    def stats(self, topic: str, now: int) -> api.StatsResponse:
        mine = [m for m in self.live if m.topic == topic]
        response = api.StatsResponse(
            ready=sum(m.state == "ready" for m in mine),
            in_flight=sum(m.state == "in_flight" for m in mine),
            delayed=sum(m.state == "delayed" for m in mine),
            dead_lettered=0 if topic.endswith(".dlq") else sum(m.topic == topic + ".dlq" for m in self.live),
            oldest_age=(now - min(m.entered_ms for m in mine)) / 1000 if mine else 0,
        )
        holders: dict[str, int] = {}
        for m in mine:
            if m.state == "in_flight":
                holders[m.consumer] = holders.get(m.consumer, 0) + 1
        response.in_flight_by_consumer.update(holders)
        return response


# ---------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Publish:
    topic: str
    entries: tuple[tuple[str, int, int], ...]  # (id, delay ms, max deliveries)


@dataclass(frozen=True)
class Consume:
    topic: str
    max_messages: int
    visibility_ms: int


@dataclass(frozen=True)
class Settle:
    kind: Literal["ack", "nack", "extend"]
    topic: str
    pick: int  # which of the topic's ids; 8: an unknown one
    receipt: Receipt
    ms: int  # nack: delay; extend: visibility timeout


@dataclass(frozen=True)
class Tick:
    ms: int


@dataclass(frozen=True)
class Restore:
    """Add a replica restored from the newest one's snapshot; from now on all must agree."""


Op = Publish | Consume | Settle | Tick | Restore
_topic = st.sampled_from(("a", "a", "b", "a.dlq", "b.dlq"))  # where the messages mostly are
operations = st.lists(
    st.one_of(
        st.builds(
            Publish,
            st.sampled_from(PUBLISH_TOPICS),
            st.lists(
                st.tuples(st.sampled_from(IDS), st.sampled_from([0, 0, 100]), st.sampled_from([0, 1, 2])),
                min_size=1,
                max_size=3,
            ).map(tuple),
        ),
        st.builds(Consume, _topic, st.integers(1, 3), st.sampled_from([0, 100, 250])),
        st.builds(
            Settle,
            st.sampled_from(["ack", "nack", "extend"]),
            _topic,
            st.integers(0, 8),
            st.sampled_from(["none", "latest", "other"]),
            st.sampled_from([0, 50, 100, 300]),
        ),
        st.builds(Tick, st.sampled_from([1, 100, 300, 30_000, rules.DEDUP_WINDOW_MS])),
        st.just(Restore()),
    ),
    min_size=20,
    max_size=100,
)


class Run:
    def __init__(self) -> None:
        self.model = Model()
        self.replicas = [Driver()]
        self.payloads = 0
        self.accepted: set[bytes] = set()
        self.delivered: set[bytes] = set()

    def each(self, step: str, *args: object) -> object:
        """Apply one step to every replica; they must answer, emit and snapshot identically."""
        outcomes = []
        for replica in self.replicas:
            replica.events.clear()
            outcomes.append((getattr(replica, step)(*args), list(replica.events), replica.machine.snapshot()))
        assert all(outcome == outcomes[0] for outcome in outcomes[1:]), f"replicas diverged at {step}{args}"
        return outcomes[0][0]

    @property
    def now(self) -> int:
        return self.replicas[0].now_ms

    @property
    def index(self) -> int:
        """The log index the next step is applied at."""
        return self.replicas[0].index + 1

    def step(self, op: Op) -> None:
        if isinstance(op, Publish):
            self.publish(op)
        elif isinstance(op, Consume):
            self.consume(op)
        elif isinstance(op, Settle):
            message_id, receipt = self.target(op)
            self.settle(op.kind, op.topic, message_id, receipt, op.ms)
        elif isinstance(op, Tick):
            index = self.index
            self.each("tick", op.ms)
            self.model.advance(index, self.now)
        else:
            self.replicas.append(self.replicas[-1].copy())
        for topic in TOPICS:
            assert self.replicas[0].stats(topic) == self.model.stats(topic, self.now), topic

    def publish(self, op: Publish) -> None:
        entries = []
        for message_id, delay, max_deliveries in op.entries:
            self.payloads += 1
            entries.append((message_id, str(self.payloads).encode(), delay, max_deliveries))
        expected = self.model.publish(op.topic, entries, self.index, self.now)
        got = self.each("publish", op.topic, *(entry(p, i, d, n) for i, p, d, n in entries))
        assert isinstance(got, list)
        assert [(r.id, r.duplicate) for r in got] == expected
        self.accepted |= {e[1] for e, (_, duplicate) in zip(entries, expected, strict=True) if not duplicate}

    def consume(self, op: Consume) -> list[api.Delivery]:
        expected = self.model.consume(op.topic, op.max_messages, op.visibility_ms, self.index, self.now)
        got = self.each("consume", op.topic, op.max_messages, op.visibility_ms, "c")
        assert isinstance(got, list)
        assert [(d.id, d.raw, d.delivery_count, d.receipt) for d in got] == expected
        self.delivered |= {d.raw for d in got}
        return got

    def target(self, op: Settle) -> tuple[str, int]:
        """An id to settle (one of the topic's, or unknown) and the receipt to settle it with."""
        ids = sorted(m.id for m in self.model.live if m.topic == op.topic)
        message_id = ids[op.pick % len(ids)] if ids and op.pick < 8 else "unknown"
        m = self.model.find(op.topic, message_id)
        latest = m.receipt if m is not None else 0
        other = latest - 1 if latest > 1 else latest + 1
        return message_id, {"none": 0, "latest": latest, "other": other}[op.receipt]

    def settle(self, kind: str, topic: str, message_id: str, receipt: int, ms: int) -> None:
        index, now, model = self.index, self.now, self.model
        if kind == "ack":
            _same(self.each("ack", topic, message_id, receipt), model.ack(topic, message_id, receipt, now))
        elif kind == "nack":
            expected = model.nack(topic, message_id, receipt, ms, index, now)
            got = self.each("nack", topic, message_id, ms, receipt)
            if isinstance(expected, bool):
                assert got == api.NackResponse(dead_lettered=expected)
            else:
                _same(got, expected)
        elif ms:  # extend; 0 is refused as invalid, which the rule tests cover
            expected_extend = model.extend(topic, message_id, receipt, ms, now)
            _same(self.each("extend", topic, message_id, ms, receipt), expected_extend)

    def drain(self) -> None:
        """Let every timeout pass, then consume and ack everything, dead letters included."""
        self.step(Tick(1))  # the clock entry that starts the waits set since the last one
        self.step(Tick(rules.MAX_VISIBILITY_MS))
        for topic in TOPICS:
            for delivery in self.consume(Consume(topic, rules.MAX_CONSUME_MESSAGES, 0)):
                self.settle("ack", topic, delivery.id, int(delivery.receipt, 16), 0)
        for topic in TOPICS:
            assert self.replicas[0].stats(topic) == api.StatsResponse(), topic


def _same(result: object, expected: Code | None) -> None:
    if expected is None:
        assert not isinstance(result, Refusal), result
    else:
        assert isinstance(result, Refusal) and result.code is expected, (result, expected)


def run_against_model(ops: list[Op]) -> None:
    run = Run()
    for op in ops:
        run.step(op)
    run.drain()
    assert run.delivered == run.accepted, "an accepted message was never delivered"
