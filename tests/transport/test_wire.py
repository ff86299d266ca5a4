"""The hand-framed batch is byte for byte the StreamRequest that protobuf would serialize."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dsync.raft.v1 import raft_pb2 as pb
from server.transport.wire import frame_batch

# Body sizes around each varint width: 1 byte below 2**7, 2 below 2**14, 3 below 2**21.
sizes = st.sampled_from([0, 1, 120, 128, 300, 16_370, 16_384, 70_000])


@given(st.lists(st.tuples(sizes, st.text(max_size=4)), max_size=6))
def test_frame_batch_matches_protobuf(shape: list[tuple[int, str]]) -> None:
    messages = []
    for n, src in shape:
        message = pb.RaftMessage(src=src, dst="d", term=n)
        message.heartbeat.context = b"c" * n
        messages.append(message)

    expected = pb.StreamRequest(messages=messages).SerializeToString()
    assert frame_batch(m.SerializeToString() for m in messages) == expected
