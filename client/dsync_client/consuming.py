"""What the blocking (queues.py) and asyncio (aio_queues.py) consumers share: how long a
delivery rests before the next one if its handler fails, and what the loop says of a
message its body left unsettled."""

from __future__ import annotations

from .queue_ops import Delivery, nack_delay

UNSETTLED = (
    "message %r was neither acked nor nacked before the loop went on (the body may have failed): nacked, "
    "back in %gs; settle each message with `with msg:` or msg.ack()"
)


def with_backoff(deliveries: list[Delivery], retry_delay: float, max_retry_delay: float) -> list[tuple[Delivery, float]]:
    """Each delivery with the seconds it rests if its handler fails: `retry_delay`
    doubling with each delivery, at most `max_retry_delay` (and the server's limit)."""
    return [(d, nack_delay(d.delivery_count, retry_delay, max_retry_delay)) for d in deliveries]
