"""Splitting a snapshot into chunks and joining them back, on their own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsync.raft.v1 import raft_pb2 as pb
from server.codec import message_from_pb, message_to_pb
from server.raft.types import Message, MsgType, Snapshot, SnapshotMeta
from server.transport.snapshot_chunks import SnapshotAssembler, split
from tests.transport.peers import append


def snapshot_message(data: bytes, index: int = 10) -> pb.RaftMessage:
    snapshot = Snapshot(SnapshotMeta(index, 2, ("a", "b", "c")), data)
    return message_to_pb(Message(MsgType.SNAPSHOT, "a", "b", 2, snapshot=snapshot))


def parsed(frames: list[bytes]) -> list[pb.RaftMessage]:
    return [pb.RaftMessage.FromString(frame) for frame in frames]


@given(size=st.integers(0, 40_000), max_bytes=st.integers(1100, 9000))
def test_chunks_join_back_into_the_same_snapshot_and_each_fits(size: int, max_bytes: int) -> None:
    message = snapshot_message(bytes(n % 251 for n in range(size)))
    frames = split(message, max_bytes)
    assert all(len(frame) <= max(max_bytes, message.ByteSize()) for frame in frames)
    if message.ByteSize() > max_bytes:
        assert all(len(frame) <= max_bytes for frame in frames) and len(frames) > 1
    assembler = SnapshotAssembler()
    out = [assembler.add(chunk) for chunk in parsed(frames)]
    assert out[:-1] == [None] * (len(frames) - 1)
    assert out[-1] is not None and message_from_pb(out[-1]) == message_from_pb(message)


def test_other_messages_and_small_snapshots_pass_through_in_one_frame() -> None:
    assembler = SnapshotAssembler()
    for message in (message_to_pb(append(3, entries=40)), snapshot_message(b"small")):
        frames = split(message, 100)  # the append is larger than that: it still goes whole
        assert len(frames) == 1
        assert assembler.add(pb.RaftMessage.FromString(frames[0])) == message


def test_a_chunk_out_of_sequence_is_refused_and_drops_the_pending_snapshot() -> None:
    first, second, third = parsed(split(snapshot_message(b"x" * 5000), 2048))
    assembler = SnapshotAssembler()
    assert assembler.add(first) is None
    with pytest.raises(ValueError, match="out of sequence"):
        assembler.add(third)
    with pytest.raises(ValueError, match="expected no chunk"):
        assembler.add(second)  # what was pending is gone: the leader resends from the start
    with pytest.raises(ValueError, match="out of sequence"):
        assembler.add(parsed(split(snapshot_message(b"y" * 5000), 2048))[1])


def test_a_new_snapshot_replaces_one_left_unfinished() -> None:
    stale = parsed(split(snapshot_message(b"old" * 2000, index=5), 2048))
    fresh = snapshot_message(b"new" * 2000, index=9)
    assembler = SnapshotAssembler()
    assert assembler.add(stale[0]) is None
    joined = [assembler.add(chunk) for chunk in parsed(split(fresh, 2048))][-1]
    assert joined is not None and message_from_pb(joined) == message_from_pb(fresh)


def test_a_chunk_of_another_snapshot_is_refused() -> None:
    mine = parsed(split(snapshot_message(b"m" * 5000, index=5), 2048))
    other = parsed(split(snapshot_message(b"o" * 5000, index=6), 2048))
    assembler = SnapshotAssembler()
    assert assembler.add(mine[0]) is None
    with pytest.raises(ValueError, match="out of sequence"):
        assembler.add(other[1])
