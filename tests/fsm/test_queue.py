"""The queue state machine, rule by rule, then against a reference model under random
operation sequences (see queue_model.py)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings

from dsync.fsm.v1 import command_pb2, queue_pb2
from dsync.v1 import queue_pb2 as api
from server.fsm import queue_rules as rules
from server.fsm import queue_store
from server.fsm.base import Code, Refusal
from server.fsm.protocols import restore
from server.fsm.queue import MessagesReady, QueueMachine
from server.fsm.router import DsyncStateMachine
from tests.fsm.queue_driver import Driver, entry, json_entry
from tests.fsm.queue_model import Op, operations, run_against_model


def refused(result: object, code: Code, *words: str) -> None:
    assert isinstance(result, Refusal), result
    assert result.code is code, result
    for word in words:
        assert word in result.message, result


# ---------------------------------------------------------------------- publish and ids


def test_ids_are_assigned_from_the_log_index_and_batch_position() -> None:
    q = Driver(index=0xA2)
    results = q.publish("t", entry(b"1"), entry(b"2", id="mine"), entry(b"3"))
    assert [(r.id, r.duplicate) for r in results] == [
        ("00000000000000a3-0", False),
        ("mine", False),
        ("00000000000000a3-2", False),
    ]


def test_a_json_value_comes_back_as_published() -> None:
    q = Driver()
    q.publish("t", json_entry({"x": 1, "tags": ["a", None, True]}))
    (delivery,) = q.consume("t")
    assert delivery.WhichOneof("payload") == "data"
    assert json_format.MessageToDict(delivery.data) == {"x": 1, "tags": ["a", None, True]}


def test_a_client_id_makes_publishing_idempotent_while_live_and_for_the_dedup_window() -> None:
    q = Driver()
    assert q.publish("t", entry(b"1", id="a"), entry(b"1 again", id="a"))[1].duplicate
    assert q.publish("t", entry(b"2", id="a"))[0].duplicate
    assert q.publish("other", entry(b"3", id="a"))[0].duplicate is False  # ids are per topic
    (delivery,) = q.consume("t")
    assert q.publish("t", entry(id="a"))[0].duplicate  # in flight
    assert q.ack("t", "a") == api.AckResponse()
    q.tick(rules.DEDUP_WINDOW_MS - 1)
    assert q.publish("t", entry(id="a"))[0].duplicate  # acked, but recently
    q.tick(1)
    assert q.publish("t", entry(b"new", id="a")) == [api.PublishResponse(id="a")]
    assert [d.raw for d in q.consume("t")] == [b"new"]


def test_only_the_most_recent_settled_ids_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "MAX_SETTLED_IDS", 2)
    q = Driver()
    for name in "abc":
        q.publish("t", entry(id=name))
        q.consume("t")
        q.ack("t", name)
    assert [q.publish("t", entry(id=name))[0].duplicate for name in "cba"] == [True, True, False]


def test_a_refused_batch_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "MAX_MESSAGES", 3)
    q = Driver()
    q.publish("t", entry(b"1"), entry(b"2"))
    before = q.machine.snapshot()
    full = q.apply(queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic="t", messages=[entry(), entry()])))
    refused(full, Code.RESOURCE_EXHAUSTED, "2 of 3 messages", "consume and ack")
    assert q.machine.snapshot() == before
    assert q.publish("t", entry(b"3"))[0].duplicate is False


def test_the_payload_budget_is_enforced_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "MAX_STORED_BYTES", 10)
    q = Driver()
    q.publish("t", entry(b"12345678"))
    refused(q.apply(queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic="t", messages=[entry(b"abc")]))),
            Code.RESOURCE_EXHAUSTED, "payload bytes")


# ---------------------------------------------------------------------- consume, ack, order


def test_consume_is_fifo_and_puts_messages_in_flight_with_a_receipt() -> None:
    q = Driver()
    q.publish("t", *(entry(str(i).encode()) for i in range(5)))
    first = q.consume("t", max_messages=2)
    index = q.index
    assert [(d.raw, d.delivery_count, d.receipt) for d in first] == [(b"0", 1, f"{index:x}"), (b"1", 1, f"{index:x}")]
    assert [d.raw for d in q.consume("t", max_messages=0)] == [b"2"]  # 0 means 1
    assert [d.raw for d in q.consume("t", max_messages=10)] == [b"3", b"4"]
    assert q.consume("t") == []
    assert q.consume("never-published") == []


def test_a_consume_answer_stops_at_the_byte_budget_but_never_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "MAX_CONSUME_BYTES", 5)
    q = Driver()
    q.publish("t", entry(b"123"), entry(b"45"), entry(b"6"), entry(b"1234567"))
    assert [d.raw for d in q.consume("t", max_messages=10)] == [b"123", b"45"]
    assert [d.raw for d in q.consume("t", max_messages=10)] == [b"6"]
    assert [d.raw for d in q.consume("t", max_messages=10)] == [b"1234567"]


def test_an_expired_visibility_timeout_redelivers_in_the_original_position_with_its_count() -> None:
    q = Driver()
    q.publish("t", entry(b"first"))
    (delivery,) = q.consume("t", visibility_ms=1000)
    q.publish("t", entry(b"second"))
    q.events.clear()
    q.tick(50)  # the first clock entry after the consume: the timeout runs from here
    q.tick(999)
    assert q.stats("t").in_flight == 1 and q.events == []
    q.tick(1)
    assert q.events == [MessagesReady("t")]
    redelivered = q.consume("t", max_messages=2)
    assert [(d.raw, d.delivery_count) for d in redelivered] == [(b"first", 2), (b"second", 1)]
    assert redelivered[0].id == delivery.id and redelivered[0].receipt != delivery.receipt


def test_a_visibility_timeout_runs_from_the_first_clock_entry_after_the_consume() -> None:
    """State-machine time is the latest clock reading, older than the Consume -- maybe older
    than its client's send.  Counting from it would redeliver the message, and refuse the
    consumer's ack, before the consumer's own 1000 ms are up."""
    q = Driver()
    q.publish("t", entry(id="a"))
    q.tick(100)
    (delivery,) = q.consume("t", visibility_ms=1000, consumer="w1")
    replica = q.copy()  # a snapshot taken before the timeout starts keeps it waiting to start
    acker = replica.copy()
    for d in (q, replica, acker):
        d.tick(80)  # 180: the first reading after the consume; due at 1180
        d.tick(999)  # 1179: past 100 + 1000
        assert d.stats("t").in_flight == 1
    assert acker.ack("t", "a", int(delivery.receipt, 16)) == api.AckResponse()
    for d in (q, replica):
        assert d.consume("t") == []
        d.tick(1)
        assert [m.delivery_count for m in d.consume("t")] == [2]


def test_the_default_visibility_timeout_is_30_seconds() -> None:
    q = Driver()
    q.publish("t", entry())
    q.consume("t")
    q.tick(10)
    q.tick(rules.DEFAULT_VISIBILITY_MS - 1)
    assert q.consume("t") == []
    q.tick(1)
    assert [d.delivery_count for d in q.consume("t")] == [2]


def test_ack_removes_and_names_what_went_wrong() -> None:
    q = Driver()
    q.publish("t", entry(id="a"), entry(id="b"))
    refused(q.ack("t", "nope"), Code.NOT_FOUND, "id:", "'nope'", "'t'")
    refused(q.ack("t", "a"), Code.FAILED_PRECONDITION, "never delivered")
    (delivery,) = q.consume("t", visibility_ms=100)
    receipt = int(delivery.receipt, 16)
    q.tick(10)
    q.tick(100)  # expired: back to ready, but not yet redelivered
    assert q.stats("t").in_flight == 0
    assert q.ack("t", "a", receipt) == api.AckResponse()  # the latest delivery may still settle it
    refused(q.ack("t", "a"), Code.NOT_FOUND)
    assert [d.id for d in q.consume("t")] == ["b"]


def test_a_stale_receipt_cannot_settle_a_redelivered_message() -> None:
    q = Driver()
    q.publish("t", entry(id="a"))
    (old,) = q.consume("t", visibility_ms=100, consumer="slow")
    q.tick(10)
    q.tick(100)
    (new,) = q.consume("t", consumer="fast")
    for result in (
        q.ack("t", "a", int(old.receipt, 16)),
        q.nack("t", "a", receipt=int(old.receipt, 16)),
        q.extend("t", "a", 1000, receipt=int(old.receipt, 16)),
    ):
        refused(result, Code.FAILED_PRECONDITION, "receipt: stale", "delivery 2")
    assert q.stats("t").in_flight_by_consumer == {"fast": 1}
    assert q.ack("t", "a", int(new.receipt, 16)) == api.AckResponse()


def ready_entries(q: Driver, topic: str) -> int:
    """The length of `topic`'s ready heap: what it costs in memory, stale entries included."""
    return len(q.machine._store.topics[topic]._ready)


def test_redelivering_one_message_again_and_again_keeps_one_ready_entry_for_it() -> None:
    q = Driver()
    q.publish("t.dlq", entry(id="p"), entry(id="behind"))
    q.consume("t.dlq", max_messages=2)
    q.nack("t.dlq", "behind", delay_ms=60_000)
    q.nack("t.dlq", "p")
    for _ in range(3 * 1024):  # past the slack that compacting stale entries allows
        (delivery,) = q.consume("t.dlq")
        assert delivery.id == "p"
        q.nack("t.dlq", "p")
    assert ready_entries(q, "t.dlq") == 1


def test_stale_ready_entries_are_dropped_once_they_outnumber_the_live_ones() -> None:
    """Messages acked after their visibility timeout, while ready behind an older one,
    leave entries that no delivery reaches; they must not pile up."""
    q = Driver()
    q.publish("t", entry(id="head"))
    for batch in range(2):
        q.publish("t", *(entry(id=f"m{batch}-{i}") for i in range(1000)))
    delivered = [d for _ in range(3) for d in q.consume("t", max_messages=1000, visibility_ms=100)]
    q.tick(10)
    q.tick(100)  # every delivery timed out: all ready again, in order
    for delivery in delivered[1:]:
        assert q.ack("t", delivery.id, int(delivery.receipt, 16)) == api.AckResponse()
    q.publish("t", entry(id="new"))
    assert q.stats("t").ready == 2
    assert ready_entries(q, "t") <= 2 * 2 + queue_store._READY_SLACK
    assert [d.id for d in q.consume("t", max_messages=10)] == ["head", "new"]
    assert q.copy().machine.snapshot() == q.machine.snapshot()


def test_nack_returns_a_message_at_once_or_after_its_delay() -> None:
    q = Driver()
    q.publish("t", entry(id="a"), entry(id="b"))
    a, b = q.consume("t", max_messages=2)
    q.events.clear()
    assert q.nack("t", "a") == api.NackResponse()
    assert q.events == [MessagesReady("t")]
    assert q.nack("t", "b", delay_ms=500) == api.NackResponse()
    assert (q.stats("t").ready, q.stats("t").delayed) == (1, 1)
    refused(q.nack("t", "b"), Code.FAILED_PRECONDITION, "not in flight")
    assert [d.id for d in q.consume("t", max_messages=2)] == ["a"]
    q.tick(10)
    q.tick(499)
    assert q.consume("t") == []
    q.tick(1)
    assert [(d.id, d.delivery_count) for d in q.consume("t")] == [("b", 2)]


def test_extend_visibility_replaces_the_deadline_from_the_next_clock_entry() -> None:
    q = Driver()
    q.publish("t", entry(id="a"))
    q.consume("t", visibility_ms=100)
    q.tick(10)  # due at 110
    q.tick(80)
    assert q.extend("t", "a", 100) == api.ExtendVisibilityResponse()
    q.tick(20)  # 110: starts the new timeout, due at 210; the first deadline passes without effect
    q.tick(99)
    assert q.stats("t").in_flight == 1
    q.tick(1)
    assert q.stats("t").ready == 1
    refused(q.extend("t", "a", 100), Code.FAILED_PRECONDITION, "not in flight")
    refused(q.extend("t", "a", 0), Code.INVALID_ARGUMENT, "visibility_timeout: required")


def test_a_delayed_publish_is_invisible_until_due_and_cannot_be_acked() -> None:
    q = Driver()
    q.events.clear()
    q.publish("t", entry(id="later", delay_ms=1000))
    assert q.events == [] and q.stats("t").delayed == 1
    assert q.consume("t") == []
    refused(q.ack("t", "later"), Code.FAILED_PRECONDITION, "never delivered")
    q.tick(10)
    q.tick(999)
    assert q.events == []
    q.tick(1)
    assert q.events == [MessagesReady("t")]
    assert [d.id for d in q.consume("t")] == ["later"]


# ---------------------------------------------------------------------- dead letters


def test_an_exhausted_message_moves_to_the_dead_letter_topic_in_the_same_entry() -> None:
    q = Driver()
    q.publish("t", entry(b"poison", id="p", max_deliveries=2), entry(b"fine", id="f"))
    for count in (1, 2):
        (delivery,) = q.consume("t", visibility_ms=100)
        assert (delivery.id, delivery.delivery_count) == ("p", count)
        q.events.clear()
        q.tick(10)
        q.tick(100)
    assert q.events == [MessagesReady("t.dlq")]
    assert (q.stats("t").ready, q.stats("t").dead_lettered) == (1, 1)
    assert q.publish("t", entry(id="p"))[0].duplicate  # a late retry of its publish adds nothing
    (dead,) = q.consume("t.dlq")
    assert (dead.id, dead.raw, dead.delivery_count) == ("p", b"poison", 1)
    assert [d.id for d in q.consume("t")] == ["f"]


def test_a_nack_of_the_last_delivery_dead_letters_at_once() -> None:
    q = Driver()
    q.publish("t", entry(id="p", max_deliveries=1))
    q.consume("t")
    assert q.nack("t", "p", delay_ms=60_000) == api.NackResponse(dead_lettered=True)
    assert [d.id for d in q.consume("t.dlq")] == ["p"]


def test_a_late_ack_of_the_last_delivery_finds_the_message_dead_lettered() -> None:
    """The one exception to "a delivered message may be acked after its visibility
    timeout": the last delivery's timeout moves the message to the dead-letter topic."""
    q = Driver()
    q.publish("t", entry(id="j", max_deliveries=1))
    (delivery,) = q.consume("t", visibility_ms=100)
    q.tick(10)
    q.tick(100)
    refused(q.ack("t", "j", int(delivery.receipt, 16)), Code.NOT_FOUND, "dead-lettered")
    (dead,) = q.consume("t.dlq")
    assert q.ack("t.dlq", dead.id, int(dead.receipt, 16)) == api.AckResponse()


def test_the_default_is_five_deliveries() -> None:
    q = Driver()
    q.publish("t", entry(id="p"))
    for count in range(1, rules.DEFAULT_MAX_DELIVERIES + 1):
        assert [d.delivery_count for d in q.consume("t")] == [count]
        assert q.nack("t", "p") == api.NackResponse(dead_lettered=count == rules.DEFAULT_MAX_DELIVERIES)
    assert q.stats("t").dead_lettered == 1


def test_a_dead_letter_topic_keeps_its_messages_however_often_they_fail() -> None:
    q = Driver()
    q.publish("t.dlq", entry(id="p", max_deliveries=1))
    for count in range(1, 4):
        assert [d.delivery_count for d in q.consume("t.dlq")] == [count]
        assert q.nack("t.dlq", "p") == api.NackResponse()
    assert q.stats("t.dlq").dead_lettered == 0 and q.stats("t.dlq.dlq") == api.StatsResponse()


def test_a_dead_lettered_id_already_taken_in_the_dead_letter_topic_is_renamed() -> None:
    q = Driver()
    q.publish("t.dlq", entry(b"direct", id="p"))
    q.publish("t", entry(b"moved", id="p", max_deliveries=1))
    q.consume("t")
    q.nack("t", "p")
    index = q.index
    got = {d.raw: d.id for d in q.consume("t.dlq", max_messages=2)}
    assert got[b"direct"] == "p"
    assert got[b"moved"].startswith(f"{index:016x}-d")


# ---------------------------------------------------------------------- stats, validation, snapshots


def test_stats_count_by_state_and_age_the_oldest_message() -> None:
    q = Driver()
    q.publish("t", entry(id="a"), entry(id="b"), entry(id="c", delay_ms=10_000))
    q.tick(1500)
    q.consume("t", consumer="w1")
    q.publish("t", entry(id="d"))
    stats = q.stats("t")
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead_lettered) == (2, 1, 1, 0)
    assert stats.oldest_age == 1.5
    assert dict(stats.in_flight_by_consumer) == {"w1": 1}
    q.ack("t", "a")
    assert q.stats("t").oldest_age == 1.5  # b was published with a
    assert q.stats("empty") == api.StatsResponse()


def test_an_emptied_topic_leaves_nothing_behind() -> None:
    q = Driver()
    q.publish("t", entry())
    (delivery,) = q.consume("t")
    q.ack("t", delivery.id)
    assert queue_pb2.QueueSnapshot.FromString(q.machine.snapshot()) == queue_pb2.QueueSnapshot(next_seq=1)


def publishing(*entries: queue_pb2.QueueMessage, topic: str = "t") -> queue_pb2.QueueCommand:
    return queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic=topic, messages=entries))


def consuming(consumer: str = "c", max_messages: int = 0, visibility_ms: int = 0) -> queue_pb2.QueueCommand:
    return queue_pb2.QueueCommand(
        consume=queue_pb2.QueueConsume(
            topic="t", consumer=consumer, max_messages=max_messages, visibility_timeout_ms=visibility_ms
        )
    )


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (queue_pb2.QueueCommand(), ["names no operation"]),
        (publishing(entry(), topic=""), ["topic: required"]),
        (publishing(entry(), topic="a b"), ["topic:", "characters"]),
        (publishing(entry(), topic="t" * 253), ["topic: 253 bytes"]),
        (publishing(entry(), topic="t" * 253 + ".dlq"), ["topic: 257 bytes"]),
        (publishing(), ["messages: 0 messages"]),
        (publishing(queue_pb2.QueueMessage()), ["messages[0].data: required"]),
        (publishing(entry(id="00000000000000ff-1")), ["messages[0].id:", "form of ids dsync assigns"]),
        (publishing(entry(id="x" * 129)), ["messages[0].id: 129 bytes"]),
        (publishing(entry(b"x" * (rules.MAX_PAYLOAD_BYTES + 1))), ["messages[0].data:", "at most 262144"]),
        (publishing(queue_pb2.QueueMessage(json=b"\xff")), ["messages[0].data: not a serialized"]),
        (publishing(entry(delay_ms=rules.MAX_DELAY_MS + 1)), ["messages[0].delay:"]),
        (publishing(entry(max_deliveries=1001)), ["messages[0].max_deliveries:"]),
        (publishing(*[entry(b"x" * 1100)] * 1000), ["messages: 1100000 payload bytes"]),
        (consuming(consumer=""), ["consumer: required"]),
        (consuming(consumer="c\n"), ["consumer:", "control"]),
        (consuming(max_messages=1001), ["max_messages:"]),
        (consuming(visibility_ms=rules.MAX_VISIBILITY_MS + 1), ["visibility_timeout:"]),
        (queue_pb2.QueueCommand(ack=queue_pb2.QueueSettle(topic="t")), ["id: required"]),
        (
            queue_pb2.QueueCommand(
                nack=queue_pb2.QueueNack(
                    message=queue_pb2.QueueSettle(topic="t", id="a"), delay_ms=rules.MAX_DELAY_MS + 1
                )
            ),
            ["delay:"],
        ),
    ],
)
def test_an_invalid_command_is_refused_naming_the_field_and_changes_nothing(
    command: queue_pb2.QueueCommand, words: list[str]
) -> None:
    q = Driver()
    q.publish("t", entry(id="a"))
    before = q.machine.snapshot()
    refused(q.apply(command), Code.INVALID_ARGUMENT, *words)
    assert q.machine.snapshot() == before


def test_garbage_is_refused_not_raised() -> None:
    refused(QueueMachine().apply(b"\xff\xff", Driver()._ctx()), Code.INVALID_ARGUMENT, "could not be decoded")


def test_a_fresh_machine_snapshots_to_nothing_and_restores_from_it() -> None:
    machine = QueueMachine()
    assert machine.snapshot() == b""
    restore(machine, b"")
    assert machine.snapshot() == b""


def test_a_corrupt_snapshot_is_refused_and_the_state_kept() -> None:
    q = Driver()
    q.publish("t", entry(id="a"))
    before = q.machine.snapshot()
    with pytest.raises(Exception, match="(?i)pars|decod|truncat"):
        restore(q.machine, b"\x12\xff")
    assert q.machine.snapshot() == before


def test_results_survive_the_router_session_cache_and_its_snapshot() -> None:
    """A retried Consume (same client id and sequence) gets the same deliveries, even on a
    node restored from a snapshot: results are protobuf messages the router can keep."""
    fsm = DsyncStateMachine({"queue": QueueMachine()})

    def queue(index: int, command: queue_pb2.QueueCommand, seq: int) -> object:
        envelope = command_pb2.Command(client_id="c", sequence=seq, queue=command.SerializeToString())
        return fsm.apply(index, envelope.SerializeToString())

    queue(1, queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic="t", messages=[entry(b"m")])), 1)
    consume = queue_pb2.QueueCommand(consume=queue_pb2.QueueConsume(topic="t", consumer="w"))
    first = queue(2, consume, 2)
    restored = DsyncStateMachine({"queue": QueueMachine()})
    restore(restored, fsm.snapshot())
    fsm = restored
    assert queue(3, consume, 2) == first
    assert isinstance(first, api.ConsumeResponse) and [d.raw for d in first.messages] == [b"m"]
    assert queue(4, consume, 3) == api.ConsumeResponse()


def test_a_session_keeping_large_consume_answers_stays_bounded_in_every_snapshot() -> None:
    fsm = DsyncStateMachine({"queue": QueueMachine()})
    index = 0

    def queue(command: queue_pb2.QueueCommand, seq: int = 0) -> object:
        nonlocal index
        index += 1
        envelope = command_pb2.Command(client_id="c" if seq else "", sequence=seq, queue=command.SerializeToString())
        return fsm.apply(index, envelope.SerializeToString())

    payload = b"x" * rules.MAX_PAYLOAD_BYTES
    consume = queue_pb2.QueueCommand(consume=queue_pb2.QueueConsume(topic="t", consumer="w", max_messages=4))
    for seq in range(1, 9):  # eight answers of 1 MiB each
        queue(publishing(*[entry(payload)] * 4))
        answer = queue(consume, seq)
        assert isinstance(answer, api.ConsumeResponse) and len(answer.messages) == 4
        for delivery in answer.messages:
            queue(queue_pb2.QueueCommand(ack=queue_pb2.QueueSettle(topic="t", id=delivery.id)))
    assert len(fsm.snapshot()) < 2.5 * rules.MAX_CONSUME_BYTES
    assert queue(consume, 8) == answer  # the newest answer is kept
    refused(queue(consume, 1), Code.FAILED_PRECONDITION, "no longer keeps")


# ---------------------------------------------------------------------- against the model


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_random_operations_match_the_reference_model_and_lose_nothing(ops: list[Op]) -> None:
    run_against_model(ops)
