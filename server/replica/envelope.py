"""The replica's header on each log entry it proposes, and the ids that go in it.

Layout of a NORMAL entry's data: an 8-byte big-endian request id, then the state
machine's command.  Every replica applies every entry, but only the one that proposed
it holds a waiter for its request id: that is how a result finds its way back to the
caller without any index -> result bookkeeping, whatever order answers arrive in.
"""

from __future__ import annotations

import secrets
import struct

_HEADER = struct.Struct(">Q")
HEADER_SIZE = _HEADER.size
_ID_SPACE = 1 << 64


def wrap(request_id: int, command: bytes) -> bytes:
    return _HEADER.pack(request_id) + command


def unwrap(data: bytes) -> tuple[int | None, bytes]:
    """(request id, command); an entry too short for a header was not written by a replica."""
    if len(data) < HEADER_SIZE:
        return None, data
    return _HEADER.unpack_from(data)[0], data[HEADER_SIZE:]


class RequestIds:
    """Unique ids for one incarnation of one replica: a random 64-bit start, then a counter.

    The random start keeps ids of different replicas, and of earlier lives of this one,
    apart, so an entry proposed elsewhere never completes a waiter here.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = secrets.randbits(64)

    def next(self) -> int:
        value = self._next
        self._next = (value + 1) % _ID_SPACE
        return value
