"""Which node to call next: the leader when known, else the next endpoint in turn.

Any node takes any call (followers forward writes to the leader), so the leader is only
preferred to save a hop; what matters is moving on when a node stops answering.  The
leader's address comes from ClusterService.Leader and is used only when it is one of the
configured endpoints: the address a node advertises to its peers may not be reachable
from the client (containers, NAT), the configured ones are.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence

ENV_VAR = "DSYNC_ENDPOINTS"
# The nodes `make cluster` (python -m server.cluster) starts.
DEFAULT_ENDPOINTS = ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053")
# For this long after an endpoint failed, a node naming it as leader is not believed: right
# after a leader dies, its followers still name it until they elect another.
SUSPECT_S = 2.0


def parse_endpoints(text: str | Iterable[str] | None) -> list[str]:
    """host:port addresses from a comma-separated string or a list; None reads
    $DSYNC_ENDPOINTS, falling back to the local cluster's three nodes."""
    if text is None:
        text = os.environ.get(ENV_VAR) or ",".join(DEFAULT_ENDPOINTS)
    items = text.split(",") if isinstance(text, str) else list(text)
    addresses = [item.strip().removeprefix("http://") for item in items if item.strip()]
    if not addresses:
        raise ValueError(f"no endpoints: pass host:port addresses, e.g. 127.0.0.1:50051, or set {ENV_VAR}")
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"endpoint {address!r} is not host:port, e.g. 127.0.0.1:50051")
    return list(dict.fromkeys(addresses))  # duplicates would only skew the rotation


class Endpoints:
    """The rotation over configured endpoints; safe to share between threads."""

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("Endpoints needs at least one host:port address")
        self._addresses = list(addresses)
        self._current = 0
        self._lock = threading.Lock()
        # Whether the current endpoint was checked since the last failure: asking Leader
        # again before every call would double the cost of calls when the leader's
        # advertised address is not among the configured ones.
        self._checked = False
        self._failed_at: dict[str, float] = {}

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    def current(self) -> str:
        with self._lock:
            return self._addresses[self._current]

    def needs_check(self) -> bool:
        """True once after each failure (and at first): time to ask who leads."""
        with self._lock:
            due, self._checked = not self._checked, True
            return due

    def failed(self, address: str) -> None:
        """`address` did not answer usefully: move on to the next endpoint (once per failure)."""
        with self._lock:
            self._failed_at[address] = time.monotonic()
            if self._addresses[self._current] == address:
                self._current = (self._current + 1) % len(self._addresses)
            self._checked = False

    def leader_is(self, address: str) -> bool:
        """Prefer the leader's address if it is configured and did not just fail; returns
        whether it is now the current endpoint."""
        with self._lock:
            failed_at = self._failed_at.get(address)
            if address not in self._addresses or (failed_at is not None and time.monotonic() - failed_at < SUSPECT_S):
                return False
            self._current = self._addresses.index(address)
            return True
