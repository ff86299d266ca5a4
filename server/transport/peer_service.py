"""The receiving end of the Raft peer streams: decodes each batch and hands it to the replica."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from dsync.raft.v1 import raft_pb2 as pb
from server.codec import message_from_pb
from server.raft.types import Message, NodeId
from server.transport.log_limit import RateLimitedLog
from server.transport.protocols import Inbox
from server.transport.snapshot_chunks import SnapshotAssembler
from server.transport.wire import CLUSTER_METADATA, RAFT_SERVICE, TOKEN_METADATA

_log = logging.getLogger(__name__)

_EMPTY_RESPONSE = pb.StreamResponse().SerializeToString()

# Terms and indexes a peer may name.  Real ones grow by one per election or entry and
# never come near it; a forged one near 2**64 would be adopted and saved, and the next
# term (2**64) could not be encoded: no election could ever succeed again.
MAX_PEER_NUMBER = (1 << 63) - 1


def _out_of_range(message: Message) -> bool:
    numbers = [message.term, message.index, message.log_term, message.commit, message.conflict_index]
    numbers.append(message.conflict_term)
    if message.entries:
        numbers.append(message.entries[-1].index)
        numbers.extend(entry.term for entry in message.entries)
    if message.snapshot is not None:
        numbers += (message.snapshot.meta.index, message.snapshot.meta.term)
    return max(numbers) > MAX_PEER_NUMBER


@dataclass(slots=True)
class ReceiveStats:
    """Counters over every stream this servicer has served, for operators and tests."""

    batches: int = 0  # StreamRequests received, decodable or not
    messages: int = 0  # messages handed to the inbox
    malformed: int = 0  # messages (or whole batches) that could not be decoded
    misaddressed: int = 0  # messages for another node: a peer has a wrong address map
    strangers: int = 0  # messages from no member of this cluster
    foreign_streams: int = 0  # streams refused because they named another cluster
    unauthenticated_streams: int = 0  # streams refused for a missing or wrong cluster token


class RaftPeerServicer:
    """Serves `RaftService.Stream`: every batch a peer writes reaches the inbox as one list.

    Input from the network is not trusted to be well formed: an undecodable batch or
    message is counted, logged (rate-limited per peer and kind of fault), and skipped,
    and the stream goes on.  Messages for another node are dropped the same way; they
    mean some peer's address map points at the wrong node.  So are messages from a
    sender outside `members` (None: anyone), which would otherwise reach the core and
    the per-peer bookkeeping under any name.  A stream that names another cluster than
    `cluster` (wire.CLUSTER_METADATA) is refused whole: a node of another cluster may
    well share a member's name.  With a `token` (CLUSTER_TOKEN), so is a stream that does
    not carry it (wire.TOKEN_METADATA): only who holds the cluster's secret can speak for
    a member.  An inbox that raises ends the stream with an error; the peer's sender
    counts that as an outage and reopens it.
    """

    def __init__(
        self,
        inbox: Inbox,
        self_id: NodeId,
        *,
        cluster: str = "",
        members: Collection[NodeId] | None = None,
        token: str = "",
    ) -> None:
        self._inbox = inbox
        self._self_id = self_id
        self._cluster = cluster
        self._token = token.encode()
        self._members = None if members is None else frozenset(members)
        self._last_contact: dict[NodeId, float] = {}
        self._faults = RateLimitedLog(_log)
        self.stats = ReceiveStats()

    def last_contact(self) -> dict[NodeId, float]:
        """time.monotonic() when each peer's latest message addressed to this node arrived."""
        return dict(self._last_contact)

    async def Stream(  # named by the proto
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        address = context.peer()
        refusal = self._refusal(dict(context.invocation_metadata() or ()))
        if refusal is not None:
            code, why, details = refusal
            self._faults.warning((address, code), "raft stream from %s %s", address, why)
            await context.abort(code, details)
        inbox = self._inbox
        chunks = SnapshotAssembler()  # per stream: a snapshot's chunks never span two
        async for request in request_iterator:
            batch = self._decode(request, address, chunks)
            if batch:
                self.stats.messages += len(batch)
                inbox(batch)
        return _EMPTY_RESPONSE

    def _refusal(self, metadata: dict[str, Any]) -> tuple[grpc.StatusCode, str, str] | None:
        """Why a stream is refused whole, if it is: its status, what the log says after the
        sender's address, and what the sender is told.  The token is asked first, so a
        stranger learns nothing, not even the cluster's name."""
        if self._token and not hmac.compare_digest(str(metadata.get(TOKEN_METADATA, "")).encode(), self._token):
            self.stats.unauthenticated_streams += 1
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "without this cluster's token: refused; give every member the same CLUSTER_TOKEN",
                "this cluster's peers must send its CLUSTER_TOKEN: give the sender the same CLUSTER_TOKEN",
            )
        named = metadata.get(CLUSTER_METADATA, "")
        if named != self._cluster:
            self.stats.foreign_streams += 1
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"names cluster {named!r}, not this node's {self._cluster!r}: refused; check its PEERS and CLUSTER_NAME",
                f"this node belongs to cluster {self._cluster!r}, not {named!r}: check the sender's PEERS",
            )
        return None

    def _decode(self, request: bytes, address: str, chunks: SnapshotAssembler) -> list[Message]:
        stats = self.stats
        stats.batches += 1
        try:
            messages = pb.StreamRequest.FromString(request).messages
        except DecodeError as exc:
            stats.malformed += 1
            self._faults.warning(
                (address, "batch"), "raft stream from %s: undecodable batch skipped: %s", address, exc
            )
            return []
        now = time.monotonic()
        self_id = self._self_id
        members = self._members
        contact = self._last_contact
        batch: list[Message] = []
        for raw in messages:
            try:
                whole = chunks.add(raw)
                if whole is None:
                    continue  # more chunks of a snapshot to come
                message = message_from_pb(whole)
                if _out_of_range(message):
                    raise ValueError(f"a term or index beyond {MAX_PEER_NUMBER}")
            except Exception as exc:  # whatever a peer sends must not end the stream
                stats.malformed += 1
                self._faults.warning(
                    (raw.src[:64], "message"),
                    "raft stream from %s (src %r): malformed message skipped: %s",
                    address,
                    raw.src,
                    exc,
                )
                continue
            if message.dst != self_id:
                stats.misaddressed += 1
                self._faults.warning(
                    (message.src[:64], "dst"),
                    "raft stream from %s (src %r): message for %r reached node %r and was dropped; "
                    "check that node's peer address map",
                    address,
                    message.src,
                    message.dst,
                    self_id,
                )
                continue
            if members is not None and message.src not in members:
                stats.strangers += 1
                self._faults.warning(
                    ("stranger", "src"),
                    "raft stream from %s: message from %r, no member of this cluster, dropped",
                    address,
                    message.src[:64],
                )
                continue
            contact[message.src] = now
            batch.append(message)
        return batch


def add_raft_service(server: grpc.aio.Server, servicer: RaftPeerServicer) -> None:
    """Registers the servicer on `server`, which should be built with wire.SERVER_OPTIONS.

    The handler passes raw bytes, not parsed StreamRequests, so that one undecodable
    batch is skipped by the servicer rather than failing the whole stream in gRPC.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Stream": grpc.stream_unary_rpc_method_handler(servicer.Stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RAFT_SERVICE, handlers),))
    server.add_registered_method_handlers(RAFT_SERVICE, handlers)
