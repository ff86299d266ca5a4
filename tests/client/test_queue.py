"""Producers and the consume loop on a real cluster: acks, backoff, dead-lettering,
visibility extension, the asyncio flavour."""

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
                deliveries.append((msg.body, msg.delivery_count))
                raise HandlerFailed
    assert deliveries == [({"job": 1}, 1), ({"job": 1}, 2), ({"job": 1}, 3)]
    stats = queue.stats()
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead_lettered) == (0, 0, 0, 1)
    dead = client.queue(f"{queue.topic}.dlq")
    for msg in dead.consume("janitor", wait=5):
        assert (msg.body, msg.delivery_count) == ({"job": 1}, 1)
        msg.ack()  # before break: leaving the loop otherwise hands the message back
        break
    assert dead.stats().ready == 0 and queue.stats().dead_lettered == 0


def test_a_returning_body_acks_and_a_slow_one_keeps_its_message(client: Client) -> None:
    queue = client.queue(_topic())
    queue.publish_batch([{"n": 1}, {"n": 2}])
    handled = []
    for msg in queue.consume("slow", visibility_timeout=0.9, wait=1):
        handled.append(msg.body)
        if msg.body == {"n": 1}:
            time.sleep(1.5)  # past the visibility timeout: only the extensions keep it ours
            stats = queue.stats()
            assert (stats.ready, stats.in_flight_by_consumer) == (1, {"slow": 1}), "redelivered while handled"
        else:
            msg.ack()  # leaving by break would hand it back
            break
    assert handled == [{"n": 1}, {"n": 2}]
    stats = queue.stats()
    assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0), "the first was acked when its body returned"


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


async def test_the_async_consume_loop_acks_and_hands_back(shared_cluster: RunningCluster) -> None:
    async with AsyncClient(shared_cluster.endpoints) as client:
        queue = client.queue(_topic())
        await queue.publish("first")
        with pytest.raises(HandlerFailed):
            async with contextlib.aclosing(queue.consume("a", wait=5, retry_delay=0.05)) as messages:
                async for msg in messages:
                    raise HandlerFailed
        async with contextlib.aclosing(queue.consume("a", wait=5)) as messages:
            async for msg in messages:
                assert (msg.body, msg.delivery_count) == ("first", 2)
                await msg.ack()
                break
        stats = await queue.stats()
        assert (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)
