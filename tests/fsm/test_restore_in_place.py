"""A follower installs the leader's snapshot over state of its own (`prepare_restore`, then
the install): from then on it must behave exactly like the leader's state machine.

Random lock, queue, cache, clock and retried commands go to two state machines whose
histories differ; at random points the second is restored in place from the first's
snapshot, after which both must answer, announce and snapshot identically.  Decoding
alone must leave the live state untouched: reads go on meanwhile.
"""

from __future__ import annotations

import random

import pytest
from google.protobuf import struct_pb2

from dsync.fsm.v1 import cache_pb2, command_pb2, lock_pb2, queue_pb2
from dsync.v1.lock_pb2 import LOCK_MODE_EXCLUSIVE, LOCK_MODE_SHARED
from server.fsm.base import Refusal
from server.fsm.cache import CacheMachine
from server.fsm.lock import LockMachine
from server.fsm.queue import QueueMachine
from server.fsm.router import DsyncStateMachine

RESOURCES = ("r1", "r2", "r3")
OWNERS = ("a", "b", "c")
KEYS = tuple(f"k{i}" for i in range(8))
MODES = (LOCK_MODE_EXCLUSIVE, LOCK_MODE_SHARED)
TOPICS = ("t", "u")


def machine(policy: str) -> DsyncStateMachine:
    cache = CacheMachine(max_entries=6, max_bytes=200, policy=policy)  # type: ignore[arg-type]
    return DsyncStateMachine({"lock": LockMachine(), "queue": QueueMachine(), "cache": cache})


class Commands:
    """A random command stream with one leader's clock and one client's sessions."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.monotonic_ms = 0
        self.sequence = 0
        self.made = 0  # commands made so far: the test applies the n-th at log index n
        self.acquired_at: dict[tuple[str, str], list[int]] = {}  # (resource, owner) -> indexes of its Acquires

    def next(self) -> bytes:
        rng = self.rng
        self.made += 1
        kind = rng.random()
        if kind < 0.2:
            self.monotonic_ms += rng.choice((1, 50, 100, 300, 1000))
            cmd = command_pb2.Command(clock=command_pb2.Clock(term=1, monotonic_ms=self.monotonic_ms))
        elif kind < 0.45:
            cmd = command_pb2.Command(lock=self._lock().SerializeToString())
        elif kind < 0.7:
            cmd = command_pb2.Command(queue=self._queue().SerializeToString())
        else:
            cmd = command_pb2.Command(cache=self._cache().SerializeToString())
        if rng.random() < 0.3:
            self.sequence += 1
            cmd.client_id = "client"
            cmd.sequence = self.sequence - rng.choice((0, 0, 0, 1))  # some retries
        return cmd.SerializeToString()

    def _lock(self) -> lock_pb2.LockCommand:
        rng, c = self.rng, lock_pb2.LockCommand()
        resource, owner = rng.choice(RESOURCES), rng.choice(OWNERS)
        op = rng.choice(("acquire", "release", "refresh", "withdraw"))
        if op == "acquire":
            c.acquire.resource, c.acquire.owner, c.acquire.mode = resource, owner, rng.choice(MODES)
            c.acquire.timeout_ms, c.acquire.ttl_ms = rng.choice((0, 100, 400)), rng.choice((0, 150, 500))
            self.acquired_at.setdefault((resource, owner), []).append(self.made)
        elif op == "release":
            c.release.resource, c.release.owner = resource, owner
        elif op == "refresh":
            c.refresh.resource, c.refresh.owner, c.refresh.ttl_ms = resource, owner, rng.choice((0, 300))
        else:
            c.withdraw.resource, c.withdraw.owner, c.withdraw.mode = resource, owner, rng.choice(MODES)
            # A wait's id is the index of the Acquire that queued it; now and then a wrong one.
            c.withdraw.wait_id = rng.choice(self.acquired_at.get((resource, owner), []) + [self.made])
        return c

    def _queue(self) -> queue_pb2.QueueCommand:
        rng, c = self.rng, queue_pb2.QueueCommand()
        topic, message_id = rng.choice(TOPICS), str(rng.randint(1, 6))
        op = rng.choice(("publish", "consume", "ack", "nack", "extend"))
        if op == "publish":
            c.publish.topic = topic
            c.publish.messages.add(
                raw=b"x",
                id=rng.choice(("", message_id)),
                delay_ms=rng.choice((0, 0, 200)),
                max_deliveries=rng.choice((0, 1, 2)),
            )
        elif op == "consume":
            c.consume.topic, c.consume.consumer, c.consume.max_messages = topic, "c", rng.randint(1, 3)
            c.consume.visibility_timeout_ms = rng.choice((0, 100, 500))
        elif op == "ack":
            c.ack.topic, c.ack.id = topic, message_id
        elif op == "nack":
            c.nack.message.topic, c.nack.message.id, c.nack.delay_ms = topic, message_id, rng.choice((0, 100))
        else:
            c.extend.message.topic, c.extend.message.id, c.extend.visibility_timeout_ms = topic, message_id, 300
        return c

    def _cache(self) -> cache_pb2.CacheCommand:
        rng, c = self.rng, cache_pb2.CacheCommand()
        key = rng.choice(KEYS)
        op = rng.choice(("put", "put", "cas", "invalidate", "touch"))
        value = struct_pb2.Value(number_value=rng.randint(0, 9)).SerializeToString()
        if op == "put":
            c.put.key, c.put.value, c.put.ttl_ms = key, value, rng.choice((0, 0, 100, 1000))
        elif op == "cas":
            c.compare_and_set.key, c.compare_and_set.value = key, value
            c.compare_and_set.expected_version = rng.randint(0, 30)
        elif op == "invalidate":
            c.invalidate.key = key
        else:
            c.touch.keys.extend(rng.sample(KEYS, 3))
        return c


def outcome(result: object) -> object:
    if isinstance(result, Refusal):
        return (result.code, result.message)
    serialize = getattr(result, "SerializeToString", None)
    return serialize(deterministic=True) if serialize else result


@pytest.mark.parametrize("seed", range(100))
def test_a_replica_restored_in_place_behaves_like_the_original(seed: int) -> None:
    rng = random.Random(seed)
    policy = rng.choice(("lru", "lfu"))
    leader, follower = machine(policy), machine(policy)
    leader_events: list[object] = []
    follower_events: list[object] = []
    leader.emit, follower.emit = leader_events.append, follower_events.append
    own = Commands(random.Random(seed + 1000))
    for index in range(1, rng.randint(1, 40)):
        follower.apply(index, own.next())  # a history of its own, to be replaced
    commands = Commands(rng)
    installed = False
    for index in range(1, 150):
        if not installed and rng.random() < 0.1:
            before = follower.snapshot()
            install = follower.prepare_restore(leader.snapshot())
            assert follower.snapshot() == before, "decoding changed the live state"
            install()
            installed = True
            assert follower.snapshot() == leader.snapshot()
        data = commands.next()
        leader_events.clear()
        follower_events.clear()
        expected = outcome(leader.apply(index, data))
        got = outcome(follower.apply(index, data))
        if installed:
            assert got == expected, (index, data)
            assert follower.snapshot() == leader.snapshot(), index
            assert [repr(e) for e in follower_events] == [repr(e) for e in leader_events], index
