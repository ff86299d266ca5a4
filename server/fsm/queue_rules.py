"""The queue's limits, defaults and naming rules, in one place for the state machine and
the servicer.

The servicer checks requests against these rules so that a bad request fails before it
is proposed, naming the public field; the state machine checks its commands against the
same rules, so a command that somehow skipped the servicer is refused identically on
every replica instead of corrupting one.  Every `*_problem` function returns what is
wrong (to follow "<field>: ") or None.

Why these numbers:
- Names and ids are small because every message, timer and remembered id carries them.
- A payload is at most 256 KiB (SQS's limit) and a batch or a consume answer 1 MiB, so
  one log entry and one gRPC message stay far below the 4 MiB gRPC default.
- The whole queue holds at most 100,000 messages and 32 MiB of payload: it lives in
  memory on every node and is serialised into every snapshot, which holds up the
  node's event loop while it is taken.
- Visibility timeouts up to 12 hours, delays up to 15 minutes and long polls up to 20
  seconds are SQS's limits, which users of queues already know.
"""

from __future__ import annotations

import re

from server.fsm.text_rules import control_character

MAX_TOPIC_BYTES = 256
DEAD_LETTER_SUFFIX = ".dlq"
# A topic that is not a dead-letter topic leaves room for its dead-letter topic's suffix.
MAX_SOURCE_TOPIC_BYTES = MAX_TOPIC_BYTES - len(DEAD_LETTER_SUFFIX)
MAX_ID_BYTES = 128
MAX_CONSUMER_BYTES = 256

MAX_PAYLOAD_BYTES = 256 << 10
MAX_BATCH_MESSAGES = 1000
MAX_BATCH_BYTES = 1 << 20
MAX_CONSUME_MESSAGES = 1000
MAX_CONSUME_BYTES = 1 << 20

DEFAULT_VISIBILITY_MS = 30_000
MAX_VISIBILITY_MS = 12 * 3600 * 1000
MAX_DELAY_MS = 15 * 60 * 1000
MAX_WAIT_MS = 20_000
DEFAULT_MAX_DELIVERIES = 5
MAX_MAX_DELIVERIES = 1000

# Client-chosen ids stay duplicates this long after their message is acked or dead-lettered
# (SQS FIFO's deduplication interval), and at most this many are remembered in all.
DEDUP_WINDOW_MS = 5 * 60 * 1000
MAX_SETTLED_IDS = 100_000

MAX_MESSAGES = 100_000
MAX_STORED_BYTES = 32 << 20

_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._:/-]+")
# The form of every id dsync assigns: 16 lowercase hex digits of a log index, then "-".
_ASSIGNED = re.compile(r"[0-9a-f]{16}-")
_RECEIPT = re.compile(r"[0-9a-f]{1,16}")


def dead_letter_topic(topic: str) -> str | None:
    """Where `topic`'s exhausted messages go; None for a dead-letter topic, which has none."""
    if topic.endswith(DEAD_LETTER_SUFFIX):
        return None
    return topic + DEAD_LETTER_SUFFIX


def assigned_id(index: int, position: int) -> str:
    """The id of a message published without one: unique, since a log index is used once."""
    return f"{index:016x}-{position}"


def renamed_id(index: int, seq: int) -> str:
    """The id of a dead-lettered message whose own id is already taken in its dead-letter topic."""
    return f"{index:016x}-d{seq}"


def is_assigned(message_id: str) -> bool:
    return _ASSIGNED.match(message_id) is not None


def format_receipt(index: int) -> str:
    """A delivery's receipt: the log index of the Consume that made it, in hex."""
    return f"{index:x}"


def parse_receipt(receipt: str) -> int | None:
    """The log index a receipt names; 0 for no receipt; None if it is not one of ours."""
    if not receipt:
        return 0
    if _RECEIPT.fullmatch(receipt) is None or int(receipt, 16) == 0:
        return None
    return int(receipt, 16)


def topic_problem(topic: str) -> str | None:
    if not topic:
        return "required: name the topic, e.g. \"orders\""
    size = len(topic.encode())
    limit = MAX_TOPIC_BYTES if dead_letter_topic(topic) is None else MAX_SOURCE_TOPIC_BYTES
    if size > limit:
        return (
            f"{size} bytes; at most {MAX_SOURCE_TOPIC_BYTES} (or {MAX_TOPIC_BYTES} for a name ending in "
            f"{DEAD_LETTER_SUFFIX!r}), so that its dead-letter topic's name fits"
        )
    if _TOPIC_CHARS.fullmatch(topic) is None:
        return f"{topic!r} has characters outside A-Z a-z 0-9 . _ : / -"
    return None


def _text_problem(value: str, limit: int) -> str | None:
    size = len(value.encode())
    if size > limit:
        return f"{size} bytes; at most {limit}"
    position = control_character(value)
    if position is not None:
        return f"character {position} is a control character ({ord(value[position]):#x}); use printable text"
    return None


def message_id_problem(message_id: str) -> str | None:
    """For an id naming an existing message (Ack, Nack, ExtendVisibility)."""
    if not message_id:
        return "required: pass the id Consume returned"
    return _text_problem(message_id, MAX_ID_BYTES)


def new_id_problem(message_id: str) -> str | None:
    """For an id a publisher chooses (empty: dsync assigns one)."""
    if not message_id:
        return None
    if is_assigned(message_id):
        return (
            f"{message_id!r} starts with 16 hex digits and '-', the form of ids dsync assigns; "
            "choose another form (e.g. a UUID) or leave it empty"
        )
    return _text_problem(message_id, MAX_ID_BYTES)


def consumer_problem(consumer: str) -> str | None:
    if not consumer:
        return "required: name the consumer, e.g. the worker's host and pid"
    return _text_problem(consumer, MAX_CONSUMER_BYTES)


def range_problem(value: int, limit: int, unit: str) -> str | None:
    """For a count or duration already defaulted; `unit` scales the message (e.g. "ms")."""
    if value > limit:
        return f"{value} {unit}; at most {limit} {unit}"
    return None
