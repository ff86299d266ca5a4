"""Producing to and consuming from a topic, blocking flavour.

    queue = client.queue("jobs")
    queue.publish({"n": 1})
    for msg in queue.consume(consumer="worker-1"):
        with msg:                 # the block ends: acked.  It raises: nacked, and the error propagates
            handle(msg.body)

A message is settled by how its handler really ended, which only the handler's own block
can tell: `with msg:` acks when the block finishes and nacks when it raises, with a delay
that doubles with each delivery, so a failing message backs off and finally moves to
`<topic>.dlq` after its max deliveries.  `msg.ack()` and `msg.nack()` settle it by hand.
The loop itself never acks: a caller may catch a handler's exception outside the loop
and resume the same generator, which then cannot tell a failed message from a handled
one.  So a message its body left unsettled is nacked with the same backoff when the next
one is asked for, or when the loop is left (an exception, `break`, the generator closed);
prefetched messages never handed out are handed back at once.  While a body runs, a
background thread extends the message's visibility every third of its visibility
timeout, so a slow handler keeps it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterable
from types import TracebackType

from . import queue_ops
from .consuming import UNSETTLED, with_backoff
from .errors import DsyncError, FailedPrecondition, NotFound
from .ops import ConsistencyName
from .queue_ops import Delivery, Outgoing, Published, QueueStats, as_outgoing
from .retry import check_seconds
from .transport import Transport
from .values import Body

log = logging.getLogger("dsync_client")


class Message:
    """One delivery being handled; `settled` once acked or nacked.

    `with msg:` settles it by how the block ends: acked when it finishes, nacked when it
    raises (the exception propagates), with `backoff` seconds before the next delivery.
    A block that settled it by hand leaves it as it is.
    """

    def __init__(self, queue: Queue, delivery: Delivery, backoff: float) -> None:
        self.delivery = delivery
        self.backoff = backoff
        self.settled = False
        self.dead_lettered = False
        self._queue = queue
        self._lock = threading.Lock()

    def __enter__(self) -> Message:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            _ack_after_handling(self)
        else:
            _hand_back(self, self.backoff)

    @property
    def id(self) -> str:
        return self.delivery.id

    @property
    def body(self) -> Body:
        return self.delivery.body

    @property
    def delivery_count(self) -> int:
        return self.delivery.delivery_count

    def ack(self) -> None:
        """Remove the message for good."""
        with self._lock:
            self._queue.ack(self.id, receipt=self.delivery.receipt)
            self.settled = True

    def nack(self, delay: float = 0.0) -> bool:
        """Hand it back, ready again after `delay` s; True if it was dead-lettered instead."""
        with self._lock:
            self.dead_lettered = self._queue.nack(self.id, receipt=self.delivery.receipt, delay=delay)
            self.settled = True
            return self.dead_lettered

    def extend(self, visibility_timeout: float) -> None:
        """Keep it in flight `visibility_timeout` s from now, unless already settled."""
        with self._lock:
            if not self.settled:
                self._queue.extend(self.id, visibility_timeout, receipt=self.delivery.receipt)


class VisibilityKeeper:
    """Extends the messages being handled, every third of their visibility timeout."""

    def __init__(self, visibility_timeout: float) -> None:
        check_seconds("visibility_timeout", visibility_timeout)  # it extends every third of it
        self._visibility = visibility_timeout
        self._messages: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, message: Message) -> None:
        with self._lock:
            self._messages[message.id] = message
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dsync-visibility", daemon=True)
                self._thread.start()

    def drop(self, message: Message) -> None:
        with self._lock:
            self._messages.pop(message.id, None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._visibility / 3):
            with self._lock:
                messages = list(self._messages.values())
            for message in messages:
                try:
                    message.extend(self._visibility)
                except (NotFound, FailedPrecondition) as gone:  # redelivered elsewhere, or settled
                    log.warning("message %r is no longer ours to extend: %s", message.id, gone)
                    self.drop(message)
                except DsyncError as error:
                    log.warning("could not extend message %r (will try again): %s", message.id, error)


class Queue:
    """One topic.  Writes are exactly-once per call: retries reuse the request header."""

    def __init__(self, transport: Transport, topic: str) -> None:
        self._t = transport
        self.topic = topic

    def publish(self, body: Body, *, id: str = "", delay: float = 0.0, max_deliveries: int = 0) -> Published:
        """Append one message: `body` is JSON or bytes (raw).  With an `id`, publishing the
        same id again adds nothing (`duplicate` in the answer)."""
        message = Outgoing(body, id, delay, max_deliveries)
        return self._t.run(queue_ops.publish(self.topic, message))

    def publish_batch(self, messages: Iterable[Body | Outgoing]) -> list[Published]:
        """Append up to 1,000 messages atomically (all or none), in order.  Items are bodies
        or `Outgoing` for per-message id, delay and max_deliveries."""
        batch = [as_outgoing(m) for m in messages]
        return self._t.run(queue_ops.publish_batch(self.topic, batch))

    def receive(
        self,
        consumer: str,
        *,
        max_messages: int = 1,
        visibility_timeout: float = 30.0,
        wait: float = 0.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> list[Message]:
        """Take up to `max_messages` ready messages, waiting up to `wait` s (at most 20)
        for one; they stay in flight for `visibility_timeout` s unless settled.  A message
        that fails in `with msg:` rests `retry_delay * 2**(delivery - 1)` s (at most
        `max_retry_delay`) before it is ready again."""
        op = queue_ops.consume(self.topic, consumer, max_messages, visibility_timeout, wait)
        received = with_backoff(self._t.run(op), retry_delay, max_retry_delay)
        return [Message(self, d, backoff) for d, backoff in received]

    def consume(
        self,
        consumer: str,
        *,
        visibility_timeout: float = 30.0,
        wait: float = 20.0,
        prefetch: int = 1,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> Generator[Message, None, None]:
        """Messages forever, each to settle with `with msg:` (see the module docstring).

        Long-polls `wait` s at a time, taking up to `prefetch` messages per poll.  A failed
        or unsettled message is nacked with `retry_delay * 2**(delivery - 1)` s (at most
        `max_retry_delay`) before it is ready again.  A DsyncError while polling or acking
        (the cluster unreachable past the client's timeout, say) ends the loop like any
        exception; unsettled messages are handed back.
        """
        keeper = VisibilityKeeper(visibility_timeout)
        handling: Message | None = None
        pending: list[Message] = []
        try:
            while True:
                pending = self.receive(
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
                    _hand_back(handled, handled.backoff, warn=True)
        finally:
            keeper.stop()
            if handling is not None:
                _hand_back(handling, handling.backoff)
            for message in pending:  # never handed out: ready again at once
                _hand_back(message, 0.0)

    def ack(self, id: str, *, receipt: str = "") -> None:
        """Remove a delivered message.  With its delivery's `receipt`, refused
        (FailedPrecondition) once the message was delivered again."""
        self._t.run(queue_ops.ack(self.topic, id, receipt))

    def nack(self, id: str, *, receipt: str = "", delay: float = 0.0) -> bool:
        """Hand an in-flight message back; True if it was dead-lettered instead."""
        return self._t.run(queue_ops.nack(self.topic, id, receipt, delay))

    def extend(self, id: str, visibility_timeout: float, *, receipt: str = "") -> None:
        """Keep an in-flight message `visibility_timeout` s from now."""
        self._t.run(queue_ops.extend(self.topic, id, receipt, visibility_timeout))

    def stats(self, *, consistency: ConsistencyName = "linearizable") -> QueueStats:
        return self._t.run(queue_ops.stats(self.topic, consistency))


def _ack_after_handling(message: Message) -> None:
    """Ack a handled message unless it was settled by hand; one that was meanwhile
    redelivered (its visibility passed) is the new delivery's to settle, which
    at-least-once delivery allows."""
    if message.settled:
        return
    try:
        message.ack()
    except (NotFound, FailedPrecondition) as gone:
        log.warning("handled message %r could not be acked: %s", message.id, gone)


def _hand_back(message: Message, delay: float, *, warn: bool = False) -> None:
    """Nack an unsettled message, ready again after `delay` s, first logging UNSETTLED if
    `warn` (the loop went on past it); one that cannot be nacked comes back when its
    visibility timeout passes."""
    if message.settled:
        return
    if warn:
        log.warning(UNSETTLED, message.id, delay)
    try:
        message.nack(delay)
    except DsyncError as error:
        log.warning("could not hand message %r back: %s", message.id, error)
