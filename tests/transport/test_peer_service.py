"""RaftPeerServicer: whatever a peer writes, the stream survives and good messages get through."""

from __future__ import annotations

import time

import grpc.aio
import pytest

from dsync.raft.v1 import raft_pb2 as pb
from server.codec import message_to_pb
from server.raft.types import Message
from server.transport.wire import CLUSTER_METADATA, STREAM_METHOD, TOKEN_METADATA, frame_batch
from tests.transport.peers import PeerServer, append, wait_until


def wire(message: Message) -> bytes:
    return message_to_pb(message).SerializeToString()


async def test_bad_input_is_skipped_and_the_stream_goes_on() -> None:
    no_body = pb.RaftMessage(src="a", dst="b", term=1).SerializeToString()
    bad_kind = message_to_pb(append(7))
    bad_kind.append_entries.entries[0].kind = pb.ENTRY_KIND_UNSPECIFIED
    misaddressed = wire(append(8, src="q", dst="z"))

    async with PeerServer("b") as b, grpc.aio.insecure_channel(b.address) as channel:
        call: grpc.aio.StreamUnaryCall[bytes, bytes] = channel.stream_unary(STREAM_METHOD)()
        await call.write(b"\xff\xff\xff")  # not a StreamRequest at all
        await call.write(
            frame_batch([no_body, wire(append(0)), bad_kind.SerializeToString(), misaddressed, wire(append(1))])
        )
        await wait_until(lambda: len(b.received) == 2)
        await call.write(frame_batch([wire(append(2))]))
        await wait_until(lambda: len(b.received) == 3)

        assert not call.done()
        assert b.received == [append(0), append(1), append(2)]
        assert b.batches == [[append(0), append(1)], [append(2)]], "a batch reaches the inbox as one list"
        stats = b.servicer.stats
        assert (stats.batches, stats.messages, stats.malformed, stats.misaddressed) == (3, 3, 3, 1)
        assert set(b.servicer.last_contact()) == {"a"}, "only messages for this node count as contact"

        await call.done_writing()
        assert await call == pb.StreamResponse().SerializeToString()


async def test_last_contact_is_when_the_latest_message_arrived() -> None:
    async with PeerServer("b") as b, grpc.aio.insecure_channel(b.address) as channel:
        call: grpc.aio.StreamUnaryCall[bytes, bytes] = channel.stream_unary(STREAM_METHOD)()
        before = time.monotonic()
        await call.write(frame_batch([wire(append(0, src="a")), wire(append(0, src="c"))]))
        await wait_until(lambda: len(b.received) == 2)
        contact = b.servicer.last_contact()
        assert set(contact) == {"a", "c"}
        assert before <= contact["a"] <= time.monotonic()

        await call.write(frame_batch([wire(append(1, src="a"))]))
        await wait_until(lambda: len(b.received) == 3)
        assert b.servicer.last_contact()["a"] >= contact["a"]
        assert b.servicer.last_contact()["c"] == contact["c"]
        call.cancel()


async def test_a_stream_naming_another_cluster_is_refused_whole() -> None:
    """The launcher names every cluster's nodes node1..N: a name alone proves nothing."""
    async with PeerServer("b", cluster="east", members={"a", "b"}) as b, grpc.aio.insecure_channel(b.address) as channel:
        west = channel.stream_unary(STREAM_METHOD)(metadata=((CLUSTER_METADATA, "west"),))
        await west.write(frame_batch([wire(append(0))]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await west
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'east'" in str(refused.value.details())
        unnamed = channel.stream_unary(STREAM_METHOD)()
        with pytest.raises(grpc.aio.AioRpcError):
            await unnamed
        east = channel.stream_unary(STREAM_METHOD)(metadata=((CLUSTER_METADATA, "east"),))
        await east.write(frame_batch([wire(append(1))]))
        await wait_until(lambda: len(b.received) == 1)
        assert b.received == [append(1)] and b.servicer.stats.foreign_streams == 2
        east.cancel()


async def test_with_a_cluster_token_a_stream_without_it_is_refused_whole() -> None:
    secret = "s3cret-token-0123456789"
    async with PeerServer("b", cluster="east", token=secret) as b, grpc.aio.insecure_channel(b.address) as channel:
        for token in (None, "wrong-token-0123456789", secret[:-1]):
            metadata = [(CLUSTER_METADATA, "east")] + ([(TOKEN_METADATA, token)] if token else [])
            call = channel.stream_unary(STREAM_METHOD)(metadata=metadata)
            await call.write(frame_batch([wire(append(0))]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "CLUSTER_TOKEN" in str(refused.value.details())
        assert b.received == [] and b.servicer.stats.unauthenticated_streams == 3
        # The token is asked first: a stranger learns nothing, not even the cluster's name.
        stranger = channel.stream_unary(STREAM_METHOD)(metadata=((CLUSTER_METADATA, "west"),))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stranger
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "east" not in str(refused.value.details())
        member = channel.stream_unary(STREAM_METHOD)(metadata=((CLUSTER_METADATA, "east"), (TOKEN_METADATA, secret)))
        await member.write(frame_batch([wire(append(1))]))
        await wait_until(lambda: len(b.received) == 1)
        assert b.received == [append(1)]
        member.cancel()


async def test_messages_from_strangers_or_with_impossible_terms_are_dropped() -> None:
    """Neither may reach the core: a forged term near 2**64 would be adopted and saved,
    and no election could follow it; any sender name would grow the per-peer records."""
    huge = message_to_pb(append(0))
    huge.term = 2**64 - 1
    async with PeerServer("b", members={"a", "b"}) as b, grpc.aio.insecure_channel(b.address) as channel:
        call: grpc.aio.StreamUnaryCall[bytes, bytes] = channel.stream_unary(STREAM_METHOD)()
        await call.write(frame_batch([wire(append(0, src="mallory")), huge.SerializeToString(), wire(append(2))]))
        await wait_until(lambda: len(b.received) == 1)
        assert b.received == [append(2)]
        stats = b.servicer.stats
        assert (stats.strangers, stats.malformed) == (1, 1)
        assert set(b.servicer.last_contact()) == {"a"}
        call.cancel()
