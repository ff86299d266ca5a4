"""The production Transport: Raft messages to peers over gRPC client streams."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping

from server.raft.types import Message, NodeId
from server.transport.log_limit import RateLimitedLog
from server.transport.peer_link import LinkSettings, PeerLink, PeerStats

__all__ = ["GrpcTransport", "PeerStats"]

_log = logging.getLogger(__name__)


class GrpcTransport:
    """One long-lived channel and one long-lived `RaftService.Stream` call per peer.

    `send` only sorts messages into per-peer queues; each peer has its own sender task
    that encodes and writes them, so a slow or dead peer holds up nobody but itself.
    A sender drains everything its peer has queued into one StreamRequest per write,
    up to `max_batch_messages` and `max_batch_bytes`: while one write is in flight the
    next batch accumulates, so batches grow with the load and an idle link still sends
    each message at once.  The two limits bound different costs: encoding costs per
    entry, so `max_batch_messages` bounds how long one batch holds the event loop
    (256 APPENDs of 64 small entries encode in about 13 ms); `max_batch_bytes` bounds
    the memory and the gRPC message size.  A snapshot larger than `max_batch_bytes`
    travels as chunks of at most that size (see snapshot_chunks); any other message
    larger than it travels alone.  See PeerLink for what is dropped when, and why.

    Messages are encoded later, by the sender task: the caller must not mutate a
    message after handing it to `send`.

    `peers` maps each peer to its "host:port"; an entry for `self_id` is ignored, so the
    whole cluster's directory can be passed.  Backoff is in seconds: after a failure
    the sender waits `connect_backoff_base`, doubling to `connect_backoff_max`, with
    jitter.  `connect_timeout` bounds one connection attempt; `write_timeout` bounds
    one write, after which the peer counts as unreachable.  `cluster` names this node's
    cluster on every stream, and `token` (if any) is its shared secret, for the receiver
    to check.
    """

    def __init__(
        self,
        self_id: NodeId,
        peers: Mapping[NodeId, str],
        *,
        max_queue: int = 10_000,
        connect_backoff_max: float = 1.0,
        connect_backoff_base: float = 0.02,
        connect_timeout: float = 2.0,
        write_timeout: float = 5.0,
        max_batch_messages: int = 256,
        max_batch_bytes: int = 4 << 20,
        cluster: str = "",
        token: str = "",
        rng: random.Random | None = None,
    ) -> None:
        settings = LinkSettings(
            cluster=cluster,
            token=token,
            max_queue=max_queue,
            max_batch_messages=max_batch_messages,
            max_batch_bytes=max_batch_bytes,
            write_timeout=write_timeout,
            connect_timeout=connect_timeout,
            backoff_base=connect_backoff_base,
            backoff_max=connect_backoff_max,
        )
        self._self_id = self_id
        self._links = {
            peer: PeerLink(peer, address, settings, rng) for peer, address in peers.items() if peer != self_id
        }
        self._unknown = RateLimitedLog(_log)

    def send(self, messages: list[Message]) -> None:
        links = self._links
        if len(messages) == 1:  # the common case when idle: skip the grouping
            message = messages[0]
            link = links.get(message.dst)
            if link is None:
                self._undeliverable(message.dst)
            else:
                link.push(messages)
            return
        by_peer: dict[NodeId, list[Message]] = {}
        for message in messages:
            group = by_peer.get(message.dst)
            if group is None:
                by_peer[message.dst] = [message]
            else:
                group.append(message)
        for peer, group in by_peer.items():
            link = links.get(peer)
            if link is None:
                self._undeliverable(peer)
            else:
                link.push(group)

    def peer_stats(self) -> dict[NodeId, PeerStats]:
        """A snapshot per peer, for the operator's view of the cluster (metrics, /raft/state)."""
        return {peer: link.stats() for peer, link in self._links.items()}

    async def close(self) -> None:
        """Stops every sender and closes every channel; bounded by about one second."""
        await asyncio.gather(*(link.close() for link in self._links.values()))

    def _undeliverable(self, peer: NodeId) -> None:
        self._unknown.warning(
            peer,
            "node %s has no address for raft peer %r, message dropped; "
            "add the peer to the addresses GrpcTransport is built with",
            self._self_id,
            peer,
        )
