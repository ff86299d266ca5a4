"""One peer's outgoing queue, and the task that streams it to the peer over gRPC."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from server.codec import message_to_pb
from server.raft.types import Message, NodeId
from server.transport.backoff import Backoff
from server.transport.log_limit import RateLimitedLog
from server.transport.snapshot_chunks import split
from server.transport.wire import (
    CLUSTER_METADATA,
    FRAME_OVERHEAD,
    MAX_MESSAGE_BYTES,
    STREAM_METHOD,
    TOKEN_METADATA,
    channel_options,
    frame_batch,
)

_log = logging.getLogger(__name__)

# A stream that ends or fails raises one of these from a write: the peer went away, the
# write outlived its deadline, or the call had already finished.
_STREAM_ERRORS = (grpc.RpcError, TimeoutError, asyncio.InvalidStateError)

# What a peer answers a stream it will not take from us: a configuration mistake.
_REFUSALS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION})

# How long close() waits for a sender to finish after cancelling it.
_CLOSE_TIMEOUT = 1.0


@dataclass(slots=True, frozen=True)
class LinkSettings:
    """Limits shared by every peer link of a transport; see GrpcTransport for their meaning."""

    max_queue: int = 10_000
    max_batch_messages: int = 256
    max_batch_bytes: int = 4 << 20
    write_timeout: float = 5.0
    connect_timeout: float = 2.0
    backoff_base: float = 0.02
    backoff_max: float = 1.0
    cluster: str = ""  # named on every stream (wire.CLUSTER_METADATA); receivers of another refuse it
    token: str = ""  # the cluster's shared secret, sent on every stream when set (wire.TOKEN_METADATA)

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {self.max_queue}")
        if self.max_batch_messages < 1:
            raise ValueError(f"max_batch_messages must be at least 1, got {self.max_batch_messages}")
        if not 0 < self.max_batch_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_batch_bytes must be in 1..{MAX_MESSAGE_BYTES}, got {self.max_batch_bytes}")
        if self.write_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError(
                f"write_timeout and connect_timeout must be positive, got {self.write_timeout}, {self.connect_timeout}"
            )
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError(
                f"need 0 < connect_backoff_base <= connect_backoff_max, got {self.backoff_base}, {self.backoff_max}"
            )


@dataclass(slots=True, frozen=True)
class PeerStats:
    """What an operator needs to tell a healthy peer link from a struggling one."""

    address: str
    connected: bool  # a stream is open and its latest write went through
    last_sent: float | None  # time.monotonic() of the latest successful write; None if never
    sent: int  # messages written to the stream
    dropped: int  # messages given up on: queue overflow, unreachable peer, failed write, unencodable
    queued: int  # messages waiting to be written


class PeerLink:
    """Moves one peer's messages: a bounded queue and one sender task on one long-lived stream.

    The queue drops its OLDEST message when full.  Raft messages supersede one another
    (a later heartbeat carries a later commit index, a later append follows on from an
    earlier one, a later term makes every older message moot), so when a peer cannot
    keep up the newest messages are the ones worth delivering; dropping the newest
    instead would hand a peer that comes back thousands of stale messages first.

    When a write fails or outlives its deadline, the peer may or may not have received
    the batch, and resending could deliver a message twice, so that batch is dropped,
    and with it everything queued: the peer is unreachable, and by the time it is back
    those messages are stale; Raft retransmits what matters.  The sender then waits
    out a jittered, capped, exponential backoff before opening a new stream.
    """

    def __init__(self, peer: NodeId, address: str, settings: LinkSettings, rng: random.Random | None = None) -> None:
        self.peer = peer
        self.address = address
        self._settings = settings
        self._queue: deque[Message] = deque(maxlen=settings.max_queue)
        # Encoded frames not yet written: one that did not fit the previous batch, or the
        # rest of a chunked snapshot.  Each with 1 if it ends its message, else 0.
        self._frames: deque[tuple[bytes, int]] = deque()
        self._wake = asyncio.Event()  # set when messages arrive or the stream ends
        self._backoff = Backoff(settings.backoff_base, settings.backoff_max, rng)
        self._errors = RateLimitedLog(_log)
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = False
        self._outage_reported = False
        self._last_sent: float | None = None
        self._sent = 0
        self._sent_on_call = 0  # messages written on the current call
        self._dropped = 0

    def push(self, messages: list[Message]) -> None:
        """Queues messages for the sender; never blocks, never waits for the peer."""
        if self._closed:
            self._dropped += len(messages)
            return
        queue = self._queue
        overflow = len(queue) + len(messages) - self._settings.max_queue
        if overflow > 0:
            self._dropped += overflow  # the deque discards as many of its oldest on extend
        queue.extend(messages)
        if self._task is None:
            self._start()
        self._wake.set()

    def stats(self) -> PeerStats:
        return PeerStats(
            address=self.address,
            connected=self._connected,
            last_sent=self._last_sent,
            sent=self._sent,
            dropped=self._dropped,
            queued=len(self._queue) + self._framed(),
        )

    async def close(self) -> None:
        """Stops the sender and closes the channel; queued messages are abandoned."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=_CLOSE_TIMEOUT)
        if self._channel is not None:
            await self._channel.close(grace=None)

    def _start(self) -> None:
        """Started on the first message rather than at construction: gRPC's aio channel
        binds to the running event loop, which the composition root may not have yet."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "GrpcTransport.send must be called on the event loop that runs the node (no loop is running)"
            ) from None
        options = channel_options(self._settings.backoff_max, self._settings.connect_timeout)
        self._channel = grpc.aio.insecure_channel(self.address, options=options)
        self._task = loop.create_task(self._run(self._channel), name=f"raft-send-{self.peer}")

    async def _run(self, channel: grpc.aio.Channel) -> None:
        # No serializers: batches are framed bytes already (see wire.frame_batch).
        open_stream: grpc.aio.StreamUnaryMultiCallable[bytes, Any] = channel.stream_unary(STREAM_METHOD)
        while True:
            await self._wake.wait()
            if not self._pending():
                self._wake.clear()
                continue
            pause = None
            try:
                await self._stream(open_stream)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REFUSALS:
                    pause = self._refused(exc)
                else:
                    self._lose_pending(exc)
            except _STREAM_ERRORS as exc:
                self._lose_pending(exc)
            except Exception as exc:  # a dead sender would cut the peer off for good
                _log.exception("raft peer %s: unexpected error in the sender; dropping its queue", self.peer)
                self._lose_pending(exc)
            self._connected = False
            await asyncio.sleep(pause if pause is not None else self._backoff.next())

    async def _stream(self, open_stream: grpc.aio.StreamUnaryMultiCallable[bytes, Any]) -> None:
        """Writes batches on one call until the call ends; raises when a batch may be lost.

        There is no deadline on the call itself, which lives as long as the peer does;
        each write has one instead, so a peer that stops reading is given up on.
        """
        metadata = [(CLUSTER_METADATA, self._settings.cluster)]
        if self._settings.token:
            metadata.append((TOKEN_METADATA, self._settings.token))
        call = open_stream(wait_for_ready=False, metadata=metadata)
        call.add_done_callback(self._on_call_done)
        self._sent_on_call = 0
        write_timeout = self._settings.write_timeout
        try:
            while True:
                while self._pending():
                    if call.done():
                        await _raise_if_refused(call)
                        return  # ended between writes: nothing lost, reopen
                    taken = self._take_batch()
                    if taken is None:
                        continue  # nothing encodable was queued
                    batch, count = taken
                    try:
                        # Not asyncio.wait_for: on 3.11 it swallows a cancellation that
                        # arrives as the write completes, and close() would hang.
                        async with asyncio.timeout(write_timeout):
                            await call.write(batch)
                    except BaseException:
                        self._dropped += count
                        raise
                    self._sent += count
                    self._sent_on_call += count
                    self._last_sent = time.monotonic()
                    self._mark_reachable()
                self._wake.clear()
                if call.done():
                    await _raise_if_refused(call)
                    return
                await self._wake.wait()
                # One more turn of the loop lets the rest of this burst (an append's
                # response, forwarded proposals, a commit notice) join the same write:
                # under load a write costs far more than the turn it waits.
                await asyncio.sleep(0)
        finally:
            call.cancel()

    def _on_call_done(self, _call: object) -> None:
        self._wake.set()

    def _pending(self) -> bool:
        return bool(self._queue) or bool(self._frames)

    def _framed(self) -> int:
        """Messages encoded but not yet written."""
        return sum(ends for _, ends in self._frames)

    def _take_batch(self) -> tuple[bytes, int] | None:
        """Encodes the head of the queue into one StreamRequest, within the batch limits;
        returns it and how many messages it completes, or None if there was nothing to send.

        Encoding here rather than in `send` keeps the caller's loop turn short and
        encodes only what is actually written (not what is dropped).
        """
        s = self._settings
        batch: list[bytes] = []
        size = completed = 0
        frames = self._frames
        queue = self._queue
        while len(batch) < s.max_batch_messages:
            if not frames:
                if not queue:
                    break
                frames.extend(self._encode(queue.popleft()))
                continue
            data, ends = frames[0]
            if batch and size + len(data) + FRAME_OVERHEAD > s.max_batch_bytes:
                break
            frames.popleft()
            batch.append(data)
            size += len(data) + FRAME_OVERHEAD
            completed += ends
        return (frame_batch(batch), completed) if batch else None

    def _encode(self, message: Message) -> list[tuple[bytes, int]]:
        """The frames that carry `message`: one, or a snapshot's chunks; none if it cannot go."""
        try:
            chunks = split(message_to_pb(message), self._settings.max_batch_bytes - FRAME_OVERHEAD)
        except Exception as exc:  # one bad message must not stop the others
            self._dropped += 1
            self._errors.warning(
                (message.type, "encode"),
                "raft peer %s: cannot encode a %s message, dropped: %s",
                self.peer,
                message.type.name,
                exc,
            )
            return []
        data = chunks[-1]
        if len(data) + FRAME_OVERHEAD > MAX_MESSAGE_BYTES:
            self._dropped += 1
            self._errors.warning(
                (message.type, "size"),
                "raft peer %s: a %s message of %d bytes exceeds the %d-byte gRPC message limit and was dropped; "
                "keep snapshots and entries below it or raise MAX_MESSAGE_BYTES on every node",
                self.peer,
                message.type.name,
                len(data),
                MAX_MESSAGE_BYTES,
            )
            return []
        return [(chunk, 0) for chunk in chunks[:-1]] + [(data, 1)]

    def _drop_queued(self) -> None:
        self._dropped += len(self._queue) + self._framed()
        self._queue.clear()
        self._frames.clear()

    def _lose_pending(self, exc: BaseException) -> None:
        self._drop_queued()
        if not self._outage_reported:
            self._outage_reported = True
            _log.warning(
                "raft peer %s at %s is unreachable (%s); dropping its messages and retrying with backoff up to %.1fs",
                self.peer,
                self.address,
                _describe(exc),
                self._settings.backoff_max,
            )

    def _refused(self, exc: grpc.aio.AioRpcError) -> float:
        """The peer turned our stream away (another cluster, a missing or wrong token): a
        configuration to fix, not an outage.  Says so (rate-limited), drops what waits,
        and returns how long to wait before asking again."""
        self._drop_queued()
        # What went out on the refused call never reached the peer's node.
        self._sent -= self._sent_on_call
        self._dropped += self._sent_on_call
        self._errors.warning(
            ("refused", exc.code()),
            "raft peer %s at %s refused this node's stream (%s): %s",
            self.peer,
            self.address,
            exc.code().name,
            exc.details(),
        )
        return self._settings.backoff_max

    def _mark_reachable(self) -> None:
        self._connected = True
        self._backoff.reset()
        if self._outage_reported:
            self._outage_reported = False
            _log.info("raft peer %s at %s is reachable again", self.peer, self.address)


async def _raise_if_refused(call: grpc.aio.StreamUnaryCall[bytes, Any]) -> None:
    """Raises the peer's AioRpcError if it ended `call` refusing us (see _REFUSALS); any
    other end just means the stream is to be reopened."""
    if await call.code() in _REFUSALS:
        await call


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "write deadline exceeded"
    return repr(exc)
