"""Snapshots larger than one write travel as consecutive chunks on one peer stream.

A state machine's snapshot can outgrow any sensible gRPC message (the cache alone may
hold hundreds of MiB), so the sender splits an InstallSnapshot into RaftMessages that
each carry a slice of the data, its `offset`, and `more` on every slice but the last;
the receiver joins them back before the core sees anything.  One stream is one ordered
byte stream, so the chunks of a snapshot arrive in order with nothing between them
from that sender; a stream that breaks mid-snapshot takes its partial snapshot with it,
and the leader sends the snapshot again when the follower asks for entries it lacks.
"""

from __future__ import annotations

from dsync.raft.v1 import raft_pb2 as pb

# The receiver's bound on one joined snapshot: a peer can make a node buffer no more.
MAX_SNAPSHOT_BYTES = 4 << 30

# Bytes a chunk adds to its header besides the data: the data, offset and more fields'
# tags and lengths, and the longer length prefix of the body (each varint <= 10 bytes).
_HEADER_ALLOWANCE = 32


def split(message: pb.RaftMessage, max_bytes: int) -> list[bytes]:
    """`message` serialized, as one frame or, for a snapshot above `max_bytes`, as chunks."""
    data = message.SerializeToString()
    if len(data) <= max_bytes or message.WhichOneof("body") != "install_snapshot":
        return [data]
    snapshot = message.install_snapshot
    whole = snapshot.data
    header = pb.RaftMessage()
    header.CopyFrom(message)
    header.install_snapshot.ClearField("data")
    room = max_bytes - header.ByteSize() - _HEADER_ALLOWANCE
    if room <= 0:
        raise ValueError(f"max_bytes {max_bytes} leaves no room for snapshot data in a chunk")
    chunks: list[bytes] = []
    for offset in range(0, len(whole), room):
        chunk = header.install_snapshot
        chunk.data = whole[offset : offset + room]
        chunk.offset = offset
        chunk.more = offset + room < len(whole)
        chunks.append(header.SerializeToString())
    return chunks


class SnapshotAssembler:
    """Joins the chunks one stream delivers back into whole InstallSnapshot messages.

    `add` returns the message to decode: the one given when it is not a chunk, the
    joined snapshot when the last chunk arrives, or None while chunks are pending.  A
    chunk that does not continue the pending snapshot (another snapshot, a gap, a size
    past MAX_SNAPSHOT_BYTES) raises ValueError and drops what was pending: the leader
    will send the snapshot again.
    """

    __slots__ = ("_head", "_parts", "_size")

    def __init__(self) -> None:
        self._head: pb.RaftMessage | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, message: pb.RaftMessage) -> pb.RaftMessage | None:
        if message.WhichOneof("body") != "install_snapshot":
            return message
        chunk = message.install_snapshot
        if chunk.offset == 0:
            self._reset()
            if not chunk.more:
                return message  # a snapshot that fitted in one message
            self._head = message
        elif self._head is None or not _same_snapshot(self._head, message) or chunk.offset != self._size:
            expected = "no chunk" if self._head is None else f"offset {self._size}"
            self._reset()
            raise ValueError(f"snapshot chunk at offset {chunk.offset} out of sequence (expected {expected})")
        self._size += len(chunk.data)
        if self._size > MAX_SNAPSHOT_BYTES:
            self._reset()
            raise ValueError(f"snapshot larger than {MAX_SNAPSHOT_BYTES} bytes")
        self._parts.append(chunk.data)
        if chunk.more:
            return None
        joined = pb.RaftMessage()
        joined.CopyFrom(message)
        joined.install_snapshot.data = b"".join(self._parts)
        joined.install_snapshot.offset = 0
        self._reset()
        return joined

    def _reset(self) -> None:
        self._head = None
        self._parts = []
        self._size = 0


def _same_snapshot(a: pb.RaftMessage, b: pb.RaftMessage) -> bool:
    return (a.src, a.term, a.install_snapshot.meta) == (b.src, b.term, b.install_snapshot.meta)
