"""The request header that makes a retried write take effect once.

Every attempt of one write carries the same (client id, sequence) pair, so the server's
session answers a retry with the first attempt's result instead of applying it again.
The server keeps only a session's latest results (256 at most) and refuses a retry whose
result it dropped.  So a Client does not put all its calls in one session: each write borrows a
session of a pool for its whole life, retries included, and gives it back when it ends.
No session ever has two writes in flight, so a retry always asks for its session's
newest result, however many writes the client's other threads or tasks make meanwhile.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from dsync.v1 import common_pb2

MAX_CLIENT_ID_BYTES = 128  # common.proto's limit
# The pool's sessions after the first are named `<client id>#<n>`: room for "#" and 7
# digits, far more sessions than calls a process has in flight at once.
SESSION_MARK = "#"
SUFFIX_BYTES = 8


def new_client_id() -> str:
    """Unique per Client instance, and readable in lock listings: host, process, random."""
    host = socket.gethostname().replace(SESSION_MARK, "-")[:64]  # a host name may hold '#'
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class _Session:
    """One server-side session: its id and the last sequence number it used."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.sequence = 0


class SessionPool:
    """Lends each write a session of its own; safe to share between threads and tasks.

    Sessions are made only when every one is lent out, so there are never more than the
    most writes the client had in flight at once; a returned one is lent again first,
    which keeps the server's other sessions idle until they expire.
    """

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id or new_client_id()
        limit = MAX_CLIENT_ID_BYTES - SUFFIX_BYTES
        if len(self.client_id.encode()) > limit:
            raise ValueError(f"client_id is longer than {limit} bytes: {self.client_id!r}; choose a shorter one")
        if SESSION_MARK in self.client_id:
            # `foo`'s second session is `foo#1`: a client named `foo#1` would share it.
            raise ValueError(f"client_id may not contain {SESSION_MARK!r}: {self.client_id!r}; choose another")
        self._free: list[_Session] = []
        self._made = 0
        self._lock = threading.Lock()

    @contextmanager
    def header(self) -> Iterator[common_pb2.RequestHeader]:
        """The header of one new write, for all its attempts: its session is the write's
        alone until the block ends, however the block ends."""
        session = self._borrow()
        try:
            session.sequence += 1
            yield common_pb2.RequestHeader(client_id=session.client_id, sequence=session.sequence)
        finally:
            with self._lock:
                self._free.append(session)

    def _borrow(self) -> _Session:
        with self._lock:
            if self._free:
                return self._free.pop()
            n, self._made = self._made, self._made + 1
        return _Session(self.client_id if n == 0 else f"{self.client_id}{SESSION_MARK}{n}")
