"""Producing to and consuming from a topic, asyncio flavour (see queues.py for the rules).

    async for msg in client.queue("jobs").consume(consumer="worker-1"):
        async with msg:           # the block ends: acked.  It raises: nacked, and the error propagates
            await handle(msg.body)

An async generator left by `break` or an exception is closed -- and its unsettled
messages nacked -- when it is garbage-collected; wrap it in `contextlib.aclosing(...)`
to settle at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from types import TracebackType

from . import queue_ops
from .aio_transport import AsyncTransport
from .consuming import UNSETTLED, with_backoff
from .errors import DsyncError, FailedPrecondition, NotFound
from .ops import ConsistencyName
from .queue_ops import Delivery, Outgoing, Published, QueueStats, as_outgoing
from .retry import check_seconds
from .values import Body

log = logging.getLogger("dsync_client")


class AsyncMessage:
    """One delivery being handled; `settled` once acked or nacked.

    `async with msg:` acks it when the block finishes and nacks it with `backoff` s when
    the block raises (see queues.Message).
    """

    def __init__(self, queue: AsyncQueue, delivery: Delivery, backoff: float) -> None:
        self.delivery = delivery
        self.backoff = backoff
        self.settled = False
        self.dead_lettered = False
        self._queue = queue
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncMessage:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await _ack_after_handling(self)
        else:
            await _hand_back(self, self.backoff)

    @property
    def id(self) -> str:
        return self.delivery.id

    @property
    def body(self) -> Body:
        return self.delivery.body

    @property
    def delivery_count(self) -> int:
        return self.delivery.delivery_count

    async def ack(self) -> None:
        """Remove the message for good."""
        async with self._lock:
            await self._queue.ack(self.id, receipt=self.delivery.receipt)
            self.settled = True

    async def nack(self, delay: float = 0.0) -> bool:
        """Hand it back, ready again after `delay` s; True if it was dead-lettered instead."""
        async with self._lock:
            self.dead_lettered = await self._queue.nack(self.id, receipt=self.delivery.receipt, delay=delay)
            self.settled = True
            return self.dead_lettered

    async def extend(self, visibility_timeout: float) -> None:
        """Keep it in flight `visibility_timeout` s from now, unless already settled."""
        async with self._lock:
            if not self.settled:
                await self._queue.extend(self.id, visibility_timeout, receipt=self.delivery.receipt)


class AsyncVisibilityKeeper:
    """Extends the messages being handled, every third of their visibility timeout."""

    def __init__(self, visibility_timeout: float) -> None:
        check_seconds("visibility_timeout", visibility_timeout)  # it extends every third of it
        self._visibility = visibility_timeout
        self._messages: dict[str, AsyncMessage] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, message: AsyncMessage) -> None:
        self._messages[message.id] = message
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dsync-visibility")

    def drop(self, message: AsyncMessage) -> None:
        self._messages.pop(message.id, None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._visibility / 3)
            for message in list(self._messages.values()):
                try:
                    await message.extend(self._visibility)
                except (NotFound, FailedPrecondition) as gone:  # redelivered elsewhere, or settled
                    log.warning("message %r is no longer ours to extend: %s", message.id, gone)
                    self.drop(message)
                except DsyncError as error:
                    log.warning("could not extend message %r (will try again): %s", message.id, error)


class AsyncQueue:
    """One topic.  Writes are exactly-once per call: retries reuse the request header."""

    def __init__(self, transport: AsyncTransport, topic: str) -> None:
        self._t = transport
        self.topic = topic

    async def publish(self, body: Body, *, id: str = "", delay: float = 0.0, max_deliveries: int = 0) -> Published:
        """Append one message: `body` is JSON or bytes (raw).  With an `id`, publishing the
        same id again adds nothing (`duplicate` in the answer)."""
        message = Outgoing(body, id, delay, max_deliveries)
        return await self._t.run(queue_ops.publish(self.topic, message))

    async def publish_batch(self, messages: Iterable[Body | Outgoing]) -> list[Published]:
        """Append up to 1,000 messages atomically (all or none), in order."""
        batch = [as_outgoing(m) for m in messages]
        return await self._t.run(queue_ops.publish_batch(self.topic, batch))

    async def receive(
        self,
        consumer: str,
        *,
        max_messages: int = 1,
        visibility_timeout: float = 30.0,
        wait: float = 0.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> list[AsyncMessage]:
        """Take up to `max_messages` ready messages, waiting up to `wait` s (at most 20)
        (see queues.Queue.receive)."""
        op = queue_ops.consume(self.topic, consumer, max_messages, visibility_timeout, wait)
        received = with_backoff(await self._t.run(op), retry_delay, max_retry_delay)
        return [AsyncMessage(self, d, backoff) for d, backoff in received]

    async def consume(
        self,
        consumer: str,
        *,
        visibility_timeout: float = 30.0,
        wait: float = 20.0,
        prefetch: int = 1,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> AsyncGenerator[AsyncMessage, None]:
        """Messages forever, each to settle with `async with msg:`; one left unsettled is
        nacked with backoff, never acked (see queues.Queue.consume)."""
        keeper = AsyncVisibilityKeeper(visibility_timeout)
        handling: AsyncMessage | None = None
        pending: list[AsyncMessage] = []
        try:
            while True:
                pending = await self.receive(
                    consumer,
                    max_messages=prefetch,
                    visibility_timeout=visibility_timeout,
                    wait=wait,
                    retry_delay=retry_delay,
                    max_retry_delay=max_retry_delay,
                )
                for message in pending:  # prefetched ones wait their turn without timing out
                    keeper.hold(message)
                while pending:
                    handling = pending.pop(0)
                    yield handling
                    keeper.drop(handling)
                    handled, handling = handling, None
                    await _hand_back(handled, handled.backoff, warn=True)
        finally:
            await keeper.stop()
            if handling is not None:
                await _hand_back(handling, handling.backoff)
            for message in pending:  # never handed out: ready again at once
                await _hand_back(message, 0.0)

    async def ack(self, id: str, *, receipt: str = "") -> None:
        await self._t.run(queue_ops.ack(self.topic, id, receipt))

    async def nack(self, id: str, *, receipt: str = "", delay: float = 0.0) -> bool:
        return await self._t.run(queue_ops.nack(self.topic, id, receipt, delay))

    async def extend(self, id: str, visibility_timeout: float, *, receipt: str = "") -> None:
        await self._t.run(queue_ops.extend(self.topic, id, receipt, visibility_timeout))

    async def stats(self, *, consistency: ConsistencyName = "linearizable") -> QueueStats:
        return await self._t.run(queue_ops.stats(self.topic, consistency))


async def _ack_after_handling(message: AsyncMessage) -> None:
    if message.settled:  # by hand
        return
    try:
        await message.ack()
    except (NotFound, FailedPrecondition) as gone:  # redelivered meanwhile: that delivery settles it
        log.warning("handled message %r could not be acked: %s", message.id, gone)


async def _hand_back(message: AsyncMessage, delay: float, *, warn: bool = False) -> None:
    if message.settled:
        return
    if warn:  # the loop went on past it
        log.warning(UNSETTLED, message.id, delay)
    try:
        await message.nack(delay)
    except DsyncError as error:  # it comes back when its visibility timeout passes
        log.warning("could not hand message %r back: %s", message.id, error)
