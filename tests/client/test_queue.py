"""Producers and the consume loop on a real cluster: settling by `with msg:`, never
acking what was not settled, backoff, dead-lettering, visibility extension, the asyncio
flavour."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest

from dsync_client import AsyncClient, Client, Outgoing
from tests.client.conftest import RunningCluster

pytestmark = pytest.mark.integration


class HandlerFailed(Exception):
    pass


def _topic() -> str:
    return f"jobs-{uuid.uuid4().hex[:8]}"


def test_a_failing_handler_gets_the_message_again_until_it_is_dead_lettered(client: Client) -> None:
    queue = client.queue(_topic())
    queue.publish({"job": 1}, max_deliveries=3)
    deliveries = []
    for _ in range(3):
        with pytest.raises(HandlerFailed):
            for msg in queue.consume("worker", wait=5, retry_delay=0.05):
                with msg:
                    deliveries.append((msg.body, msg.delivery_count))
                    raise HandlerFailed
    assert deliveries == [({"job": 1}, 1), ({"job": 1}, 2), ({"job": 1}, 3)]
    stats = queue.stats()
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead_lettered) == (0, 0, 0, 1)
    dead = client.queue(f"{queue.topic}.dlq")
    for msg in dead.consume("janitor", wait=5):
        with msg:
            assert (msg.body, msg.delivery_count) == ({"job": 1}, 1)
        break
    assert dead.stats().ready == 0 and queue.stats().dead_lettered == 0


def test_a_finished_with_block_acks_and_a_slow_one_keeps_its_message(client: Client) -> None:
    queue = client.queue(_topic())
    queue.publish_batch([{"n": 1}, {"n": 2}])
    handled = []
    for msg in queue.consume("slow", visibility_timeout=0.9, wait=1):
        with msg:
            handled.append(msg.body)
            if msg.body == {"n": 1}:
                time.sleep(1.5)  # past the visibility timeout: only the extensions keep it ours
                stats = queue.stats()
                assert (stats.ready, stats.in_flight_by_consumer) == (1, {"slow": 1}), "redelivered while handled"
        if msg.body == {"n": 2}:
            break
    assert handled == [{"n": 1}, {"n": 2}]
    stats = queue.stats()
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0), "each was acked when its block finished"


def test_a_generator_resumed_after_its_body_raised_hands_the_failed_message_back(client: Client) -> None:
    queue = client.queue(_topic())
    queue.publish_batch([{"job": 1}, {"job": 2}])
    messages = queue.consume("worker", wait=5, retry_delay=30)
    with pytest.raises(HandlerFailed):
        for msg in messages:
            raise HandlerFailed
    handled = []
    for msg in messages:  # re-entered, as by a caller that caught the error outside the loop
        handled.append(msg.body)
        msg.ack()
        break
    messages.close()
    assert handled == [{"job": 2}]
    stats = queue.stats()
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 1), "the failed message was acked and lost"


def test_with_msg_acks_a_clean_exit_and_nacks_a_failure_with_backoff(client: Client) -> None:
    queue = client.queue(_topic())
    queue.publish_batch([{"job": 1}, {"job": 2}])
    messages = queue.consume("worker", wait=5, retry_delay=30)
    handled = []
    for _ in range(2):
        with contextlib.suppress(HandlerFailed):
            for msg in messages:
                with msg:
                    handled.append(msg.body)
                    if msg.body == {"job": 1}:
                        raise HandlerFailed
                break
    messages.close()
    assert handled == [{"job": 1}, {"job": 2}]
    stats = queue.stats()
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 1), "job 1 backs off, job 2 is acked"


def test_a_consume_loop_needs_a_visibility_timeout_it_can_extend_every_third_of(client: Client) -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="visibility_timeout"):
            next(client.queue(_topic()).consume("worker", visibility_timeout=bad, wait=0.1))


def test_publish_ids_are_idempotent_and_raw_bodies_stay_bytes(client: Client) -> None:
    queue = client.queue(_topic())
    first, raw = queue.publish_batch([Outgoing({"order": 7}, id="order-7"), b"\x00\xffraw"])
    again = queue.publish({"order": 7}, id="order-7")
    assert (first.id, first.duplicate, again.id, again.duplicate) == ("order-7", False, "order-7", True)
    taken = queue.receive("c", max_messages=10, wait=1)
    assert [(m.id, m.body) for m in taken] == [("order-7", {"order": 7}), (raw.id, b"\x00\xffraw")]
    for msg in taken:
        msg.ack()
    assert queue.stats().ready == 0


async def test_the_async_consume_loop_settles_by_how_the_block_ends(shared_cluster: RunningCluster) -> None:
    async with AsyncClient(shared_cluster.endpoints) as client:
        queue = client.queue(_topic())
        await queue.publish("first")
        with pytest.raises(HandlerFailed):
            async with contextlib.aclosing(queue.consume("a", wait=5, retry_delay=0.05)) as messages:
                async for msg in messages:
                    async with msg:
                        raise HandlerFailed
        async with contextlib.aclosing(queue.consume("a", wait=5)) as messages:
            async for msg in messages:
                async with msg:
                    assert (msg.body, msg.delivery_count) == ("first", 2)
                break
        stats = await queue.stats()
        assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)


async def test_an_async_generator_resumed_after_its_body_raised_hands_the_message_back(
    shared_cluster: RunningCluster,
) -> None:
    async with AsyncClient(shared_cluster.endpoints) as client:
        queue = client.queue(_topic())
        await queue.publish_batch(["first", "second"])
        async with contextlib.aclosing(queue.consume("a", wait=5, retry_delay=30)) as messages:
            with pytest.raises(HandlerFailed):
                async for msg in messages:
                    raise HandlerFailed
            async for msg in messages:  # re-entered: "first" failed, so it is not acked
                async with msg:
                    assert (msg.body, msg.delivery_count) == ("second", 1)
                break
        stats = await queue.stats()
        assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 1), "the failed message was acked and lost"
