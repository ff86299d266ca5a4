"""What the contract cannot say: key layout, round trips, crash and restart of Redis itself."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from server.codec import encode_entry
from server.raft.types import Entry, HardState, SnapshotMeta
from server.storage.embedded_redis import EmbeddedRedis
from server.storage.errors import CorruptLogError
from server.storage.keys import NodeKeys
from server.storage.redis_store import RedisRaftStorage

from .conftest import Stores
from .entries import span

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _keys(url: str, pattern: str) -> set[str]:
    async with Redis.from_url(url, decode_responses=True) as raw:
        return {key async for key in raw.scan_iter(match=pattern)}


async def test_nodes_sharing_one_redis_do_not_see_each_other(redis_stores: Stores) -> None:
    a, b = redis_stores.open("a"), redis_stores.open("b")
    await a.save(HardState(5, "a", 3), span(1, 3, term=5))
    await a.compact(SnapshotMeta(1, 5))
    assert await b.load() == (SnapshotMeta(), [])
    assert await b.load_hard_state() == HardState()
    await b.save(HardState(1, "b", 0), span(1, 1))
    assert await a.load() == (SnapshotMeta(1, 5), span(2, 3, term=5))
    assert await a.load_hard_state() == HardState(5, "a", 3)

    url = redis_stores.redis_url
    assert url is not None
    a_keys = NodeKeys.for_node(redis_stores.cluster, "a")
    assert await _keys(url, a_keys.pattern) == {a_keys.hard_state, a_keys.log, a_keys.log_start}
    everything = await _keys(url, f"dsync:{redis_stores.cluster}:*")
    assert everything == await _keys(url, a_keys.pattern) | await _keys(url, NodeKeys.for_node(redis_stores.cluster, "b").pattern)


async def test_the_same_node_name_in_two_clusters_is_two_nodes(redis_server: EmbeddedRedis) -> None:
    one = RedisRaftStorage.from_url(redis_server.url, cluster="twin-1", node="n1")
    two = RedisRaftStorage.from_url(redis_server.url, cluster="twin-2", node="n1")
    try:
        await one.append(span(1, 2))
        assert await two.load() == (SnapshotMeta(), [])
    finally:
        await one.close()
        await two.close()


def record_sends(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every packed write to Redis from now on (until monkeypatch.undo()), one item per send."""
    sends: list[bytes] = []
    original = Connection.send_packed_command

    async def recording(self: Connection, command: Any, check_health: bool = True) -> None:
        sends.append(b"".join(command) if isinstance(command, list) else command)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", recording)
    return sends


async def test_save_is_one_transaction_in_one_round_trip(
    redis_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = redis_stores.open()
    await store.append(span(1, 5))
    await store.load()  # bounds are known from here on
    sends = record_sends(monkeypatch)
    await store.save(HardState(2, "n1", 3), span(4, 6, term=2))  # truncates and appends
    monkeypatch.undo()

    assert len(sends) == 1
    assert sends[0].startswith(b"*1\r\n$5\r\nMULTI") and b"EXEC" in sends[0]
    assert await store.load_hard_state() == HardState(2, "n1", 3)
    assert (await store.load())[1] == span(1, 3) + span(4, 6, term=2)


async def test_a_plain_append_is_one_rpush(redis_stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    store = redis_stores.open()
    await store.append(span(1, 3))
    sends = record_sends(monkeypatch)
    await store.append(span(4, 6))
    monkeypatch.undo()
    assert len(sends) == 1 and sends[0].startswith(b"*5\r\n$5\r\nRPUSH")
    assert (await store.load())[1] == span(1, 6)


@pytest.mark.parametrize("path", ["rpush", "transaction"])
async def test_an_ambiguous_write_failure_makes_the_store_reread_its_bounds(
    redis_stores: Stores, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The reply is lost after Redis applied the write: the retry must not duplicate entries."""
    store = redis_stores.open()
    await store.append(span(1, 3))
    if path == "rpush":
        original_command = Redis.execute_command

        async def lost_command_reply(self: Redis, *args: Any, **options: Any) -> Any:
            await original_command(self, *args, **options)
            raise RedisConnectionError("connection reset after RPUSH")

        monkeypatch.setattr(Redis, "execute_command", lost_command_reply)
    else:
        original = Pipeline.execute

        async def lost_reply(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
            await original(self, raise_on_error)
            raise RedisConnectionError("connection reset after EXEC")

        monkeypatch.setattr(Pipeline, "execute", lost_reply)
    with pytest.raises(RedisConnectionError):
        await store.save(None if path == "rpush" else HardState(1, "n1", 3), span(4, 4))
    monkeypatch.undo()

    await store.append(span(4, 5))
    assert (await store.load())[1] == span(1, 5)


async def test_an_append_that_finds_a_log_it_did_not_write_stops_with_the_cause(redis_stores: Stores) -> None:
    store = redis_stores.open()
    await store.append(span(1, 3))
    intruder = redis_stores.open()
    await intruder.append(span(4, 4))  # a second writer on the same node's keys
    with pytest.raises(CorruptLogError, match="another process writes this node's keys"):
        await store.append(span(4, 5))


async def test_load_reads_a_long_log_in_chunks(redis_stores: Stores) -> None:
    writer = redis_stores.open()
    await writer.append(span(1, 10))
    await writer.compact(SnapshotMeta(1, 1))
    for chunk in (1, 3, 9, 10):
        assert await redis_stores.open(load_chunk=chunk).load() == (SnapshotMeta(1, 1), span(2, 10))


async def test_load_refuses_a_log_whose_positions_and_indices_disagree(redis_stores: Stores) -> None:
    store = redis_stores.open()
    await store.append(span(1, 3))
    assert redis_stores.redis_url is not None
    async with Redis.from_url(redis_stores.redis_url) as raw:
        await raw.rpush(NodeKeys.for_node(redis_stores.cluster, "n1").log, encode_entry(Entry(1, 7)))
    with pytest.raises(CorruptLogError, match="position 3 holds index 7"):
        await redis_stores.open().load()


async def test_a_client_decoding_responses_is_refused(redis_server: EmbeddedRedis) -> None:
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisRaftStorage(client, NodeKeys.for_node("c", "n"))


async def _write_history(url: str) -> tuple[SnapshotMeta, list[Entry], HardState]:
    store = RedisRaftStorage.from_url(url, cluster="c", node="n1")
    try:
        await store.save(HardState(2, "n1", 6), span(1, 8, term=2))
        await store.compact(SnapshotMeta(3, 2, ("n1", "n2", "n3")))
        await store.save(HardState(3, "n2", 7), span(7, 9, term=3))
        return SnapshotMeta(3, 2, ("n1", "n2", "n3")), span(4, 6, term=2) + span(7, 9, term=3), HardState(3, "n2", 7)
    finally:
        await store.close()


async def _read_back(url: str) -> tuple[SnapshotMeta, list[Entry], HardState]:
    store = RedisRaftStorage.from_url(url, cluster="c", node="n1")
    try:
        meta, entries = await store.load()
        return meta, entries, await store.load_hard_state()
    finally:
        await store.close()


async def test_a_restarted_redis_server_finds_the_data_again(data_dir: Path) -> None:
    async with EmbeddedRedis(data_dir, appendfsync="everysec") as server:
        expected = await _write_history(server.url)
    async with EmbeddedRedis(data_dir, appendfsync="everysec") as server:
        assert await _read_back(server.url) == expected


async def test_a_killed_redis_server_loses_nothing_acknowledged_with_fsync_always(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir, appendfsync="always")
    await server.start()
    try:
        expected = await _write_history(server.url)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
    finally:
        await server.stop()
    async with EmbeddedRedis(data_dir) as server:
        assert await _read_back(server.url) == expected
