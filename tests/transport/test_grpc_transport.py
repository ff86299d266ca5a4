"""GrpcTransport end to end, over real grpc.aio servers on ephemeral ports."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from server.codec import message_to_pb
from server.raft.types import Message, MsgType, NodeId, Snapshot, SnapshotMeta
from server.transport.grpc_transport import GrpcTransport
from server.transport.protocols import Transport
from server.transport.wire import FRAME_OVERHEAD
from tests.transport.peers import PeerServer, append, refused_address, wait_until

MakeTransport = Callable[..., GrpcTransport]


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    made: list[GrpcTransport] = []

    def make(peers: Mapping[NodeId, str], **options: Any) -> GrpcTransport:
        transport = GrpcTransport("a", peers, **options)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


def indices(messages: list[Message]) -> list[int]:
    return [m.index for m in messages]


@pytest.mark.parametrize(("sent", "arrives"), [("same-token-0123456789", True), ("", False)])
async def test_a_transport_speaks_to_a_peer_with_the_clusters_token(
    make_transport: MakeTransport, sent: str, arrives: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with PeerServer("b", cluster="c", token="same-token-0123456789") as b:
        transport = make_transport({"b": b.address}, cluster="c", token=sent)
        transport.send([append(0)])
        if arrives:
            await wait_until(lambda: b.received == [append(0)])
            return
        # Refused: the sender says so, counts the message lost, and does not hammer the peer.
        await wait_until(lambda: transport.peer_stats()["b"].dropped == 1)
        assert b.received == [] and transport.peer_stats()["b"].sent == 0
        assert "refused this node's stream (UNAUTHENTICATED)" in caplog.text and "CLUSTER_TOKEN" in caplog.text
        for i in range(1, 20):
            transport.send([append(i)])
            await asyncio.sleep(0.01)
        assert b.servicer.stats.unauthenticated_streams <= 2, "a refused sender must back off, not retry at once"


async def test_batches_arrive_complete_and_in_order(make_transport: MakeTransport) -> None:
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address})
        sent: list[Message] = []
        for turn in range(20):
            batch = [append(turn * 100 + i) for i in range(100)]
            sent.extend(batch)
            transport.send(batch)
            await asyncio.sleep(0)

        await wait_until(lambda: len(b.received) >= len(sent))
        assert b.received == sent
        await wait_until(lambda: transport.peer_stats()["b"].sent == len(sent))
        stats = transport.peer_stats()["b"]
        assert stats.connected and stats.dropped == 0 and stats.queued == 0
        assert stats.last_sent is not None and stats.last_sent <= time.monotonic()


async def test_a_snapshot_above_grpcs_default_4mib_limit_arrives(make_transport: MakeTransport) -> None:
    snapshot = Snapshot(SnapshotMeta(10, 2, ("a", "b", "c")), b"s" * (6 << 20))
    message = Message(MsgType.SNAPSHOT, "a", "b", 2, snapshot=snapshot)
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address})
        transport.send([append(1), message, append(2)])
        await wait_until(lambda: len(b.received) == 3)
        assert b.received == [append(1), message, append(2)]


async def test_a_snapshot_larger_than_a_batch_travels_in_chunks_and_arrives_whole(
    make_transport: MakeTransport,
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    snapshot = Snapshot(SnapshotMeta(10, 2, ("a", "b", "c")), data)
    message = Message(MsgType.SNAPSHOT, "a", "b", 2, snapshot=snapshot)
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address}, max_batch_bytes=64 << 10)
        transport.send([append(1), message, append(2)])
        await wait_until(lambda: len(b.received) == 3)
        assert b.received == [append(1), message, append(2)]
        assert b.servicer.stats.batches >= 16  # one write per 64 KiB chunk at most
        await wait_until(lambda: transport.peer_stats()["b"].sent == 3)
        assert b.servicer.stats.malformed == 0


async def test_messages_sent_in_one_loop_turn_share_few_writes(make_transport: MakeTransport) -> None:
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address}, max_batch_messages=512)
        for i in range(2000):  # as many separate sends, none awaited: one loop turn
            transport.send([append(i)])

        await wait_until(lambda: len(b.received) == 2000)
        assert [len(batch) for batch in b.batches] == [512, 512, 512, 464]
        assert indices(b.received) == list(range(2000))


async def test_batches_stay_within_the_byte_limit(make_transport: MakeTransport) -> None:
    limit = 2_000
    messages = [append(i, entries=4) for i in range(200)]
    huge = append(200, entries=500)  # larger than the limit on its own: still goes, alone
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address}, max_batch_bytes=limit)
        transport.send(messages + [huge])

        await wait_until(lambda: len(b.received) == 201)
        assert b.received == messages + [huge]
        assert b.batches[-1] == [huge]
        for batch in b.batches[:-1]:
            assert sum(len(message_to_pb(m).SerializeToString()) + FRAME_OVERHEAD for m in batch) <= limit
        assert len(b.batches) > 200 * 60 // limit


async def test_a_dead_peer_blocks_neither_send_nor_the_other_peers(make_transport: MakeTransport) -> None:
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address, "c": refused_address()}, connect_backoff_max=0.1)
        transport.send([append(0, dst="c")])
        await wait_until(lambda: transport.peer_stats()["c"].dropped == 1)  # c's sender now backs off

        to_c = [append(i, dst="c") for i in range(10_000)]
        start = time.perf_counter()
        transport.send(to_c)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.05, f"send of 10k messages to a dead peer took {elapsed * 1000:.1f} ms"

        transport.send([append(i) for i in range(100)])
        await wait_until(lambda: len(b.received) == 100, timeout=2.0)
        await wait_until(lambda: transport.peer_stats()["c"].dropped == 10_001)
        c = transport.peer_stats()["c"]
        assert c.sent == 0 and not c.connected and c.last_sent is None


async def test_a_peer_that_accepts_but_never_answers_is_given_up_on(make_transport: MakeTransport) -> None:
    with socket.socket() as silent:  # the kernel completes TCP handshakes; nobody speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent_address = "127.0.0.1:%d" % silent.getsockname()[1]
        async with PeerServer("b") as b:
            transport = make_transport(
                {"b": b.address, "c": silent_address}, write_timeout=0.2, connect_timeout=0.2, connect_backoff_max=0.1
            )
            transport.send([append(0, dst="c"), append(0)])
            await wait_until(lambda: len(b.received) == 1, timeout=1.0)
            await wait_until(lambda: transport.peer_stats()["c"].dropped == 1, timeout=3.0)
            transport.send([append(1)])
            await wait_until(lambda: len(b.received) == 2, timeout=1.0)


async def test_the_sender_reconnects_after_the_peer_restarts_on_the_same_port(make_transport: MakeTransport) -> None:
    b = PeerServer("b")
    await b.start()
    try:
        transport = make_transport({"b": b.address}, connect_backoff_max=0.1)
        transport.send([append(0)])
        await wait_until(lambda: len(b.received) == 1)
        await b.stop()

        next_index = 1

        async def send_until(condition: Callable[[], bool]) -> None:
            nonlocal next_index
            while not condition():
                transport.send([append(next_index)])
                next_index += 1
                await asyncio.sleep(0.01)

        # While the peer is down its messages are dropped (and counted), not hoarded.
        await asyncio.wait_for(send_until(lambda: transport.peer_stats()["b"].dropped > 0), 5.0)
        assert not transport.peer_stats()["b"].connected

        await b.start()
        await asyncio.wait_for(send_until(lambda: len(b.received) > 1), 5.0)
        received = indices(b.received)
        assert received == sorted(set(received)), "duplicated or reordered across the restart"
        assert transport.peer_stats()["b"].connected
    finally:
        await b.stop()


async def test_a_full_queue_drops_its_oldest_messages_and_counts_them(make_transport: MakeTransport) -> None:
    async with PeerServer("b") as b:
        transport = make_transport({"b": b.address}, max_queue=10)
        transport.send([append(i) for i in range(5)])
        transport.send([append(i) for i in range(5, 25)])
        stats = transport.peer_stats()["b"]
        assert (stats.dropped, stats.queued) == (15, 10)

        await wait_until(lambda: len(b.received) == 10)
        assert indices(b.received) == list(range(15, 25))


async def test_close_is_prompt_and_later_sends_are_ignored(make_transport: MakeTransport) -> None:
    async with PeerServer("b") as b:
        transport = GrpcTransport("a", {"b": b.address, "c": refused_address()})
        transport.send([append(0), append(0, dst="c")])
        await wait_until(lambda: len(b.received) == 1 and transport.peer_stats()["c"].dropped == 1)

        start = time.perf_counter()
        await asyncio.wait_for(transport.close(), 2.0)
        assert time.perf_counter() - start < 0.5
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("raft-send-")]

        transport.send([append(1)])
        assert transport.peer_stats()["b"].dropped == 1


async def test_messages_for_unknown_peers_are_dropped_with_a_hint(
    make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    transport = make_transport({"a": refused_address(), "b": refused_address()})
    assert set(transport.peer_stats()) == {"b"}, "the node's own address is not a peer"
    with caplog.at_level(logging.WARNING):
        transport.send([append(0, dst="zz"), append(1, dst="zz")])
    hint = "node a has no address for raft peer 'zz', message dropped; add the peer to the addresses"
    assert [r.getMessage().startswith(hint) for r in caplog.records] == [True]


def test_send_outside_the_event_loop_says_where_to_call_it() -> None:
    transport = GrpcTransport("a", {"b": refused_address()})
    with pytest.raises(RuntimeError, match="event loop"):
        transport.send([append(0)])


def test_bad_settings_are_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match="max_queue must be at least 1"):
        GrpcTransport("a", {}, max_queue=0)
    with pytest.raises(ValueError, match="connect_backoff_base <= connect_backoff_max"):
        GrpcTransport("a", {}, connect_backoff_base=2.0, connect_backoff_max=1.0)


def test_grpc_transport_is_a_transport() -> None:
    transport: Transport = GrpcTransport("a", {})
    assert transport is not None


async def test_close_in_the_middle_of_busy_writes_stops_the_sender() -> None:
    # Regression: a cancellation that arrived as a write completed used to be swallowed
    # (asyncio.wait_for on 3.11), leaving the sender running after close().
    async with PeerServer("b") as b:
        for _ in range(30):
            transport = GrpcTransport("a", {"b": b.address}, max_batch_messages=64)
            for i in range(10):
                transport.send([append(i) for _ in range(200)])
                await asyncio.sleep(0)
            start = time.perf_counter()
            await transport.close()
            assert time.perf_counter() - start < 0.5
            assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("raft-send-")]
