"""The request header that makes a retried write take effect once.

One client id per Client instance, and a sequence number per new write: every attempt of
one write carries the same pair, so the server's session answers a retry with the first
attempt's result instead of applying it again.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from dsync.v1 import common_pb2

MAX_CLIENT_ID_BYTES = 128  # common.proto's limit


def new_client_id() -> str:
    """Unique per Client instance, and readable in lock listings: host, process, random."""
    host = socket.gethostname()[:64]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Session:
    """Hands out request headers; safe to share between threads and tasks."""

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id or new_client_id()
        if len(self.client_id.encode()) > MAX_CLIENT_ID_BYTES:
            raise ValueError(f"client_id is longer than {MAX_CLIENT_ID_BYTES} bytes: {self.client_id!r}")
        self._sequence = 0
        self._lock = threading.Lock()

    def header(self) -> common_pb2.RequestHeader:
        """The header of one new write: call once per write, then reuse it for its retries."""
        with self._lock:
            self._sequence += 1
            return common_pb2.RequestHeader(client_id=self.client_id, sequence=self._sequence)
