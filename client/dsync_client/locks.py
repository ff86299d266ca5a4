"""`with client.lock(...) as held:` -- a lock held for a block, its lease kept alive.

The lease is what makes a lock safe against a holder that dies: it ends `ttl` seconds
after the last refresh.  While the block runs, a background thread refreshes it every
ttl/3; if a refresh fails for good (the cluster says it is not held, or no refresh got
through before the lease would have ended) `held.lost` is set and the block should stop
acting on the protected resource.  The fencing token `held.token` lets the resource
itself refuse a holder that did not notice in time.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from types import TracebackType

from . import lock_ops
from .errors import DsyncError, LockLost, NotHeld
from .lock_ops import Grant, Mode
from .transport import Transport

log = logging.getLogger("dsync_client")
_blocks = itertools.count(1)


def lease_start(sent: float, timeout: float) -> float:
    """When a granted lease began, by the local clock, for judging when it would end.

    A lease counts from its grant.  A request that could not wait was granted at once,
    after `sent`, so `sent` is a safe (early) estimate.  One that could wait may have been
    granted at any point of its wait: the answer's arrival is the estimate then, late by
    one network delay -- counting from `sent` would take a lease granted after a wait
    longer than its ttl for lost at once.
    """
    return sent if timeout == 0 else time.monotonic()


def block_owner(client_id: str) -> str:
    """An owner name for one `with` block: the client's id and a counter."""
    return f"{client_id}/{next(_blocks)}"


class HeldLock:
    """The hold a `with client.lock(...)` block has: `token` is the fencing token; `lost`
    is set as soon as the lease may have ended without the block being told."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.lost = threading.Event()

    @property
    def resource(self) -> str:
        return self.grant.resource

    @property
    def owner(self) -> str:
        return self.grant.owner

    @property
    def mode(self) -> str:
        return self.grant.mode

    @property
    def token(self) -> int:
        return self.grant.token


class LockContext:
    """Acquires on enter, refreshes while inside, releases on exit (exceptions included)."""

    def __init__(
        self, transport: Transport, resource: str, owner: str | None, mode: Mode, timeout: float, ttl: float
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive seconds (the lease), got {ttl!r}")
        self._t = transport
        self._resource = resource
        self._owner = owner or block_owner(transport.session.client_id)
        self._mode = mode
        self._timeout = timeout
        self._ttl = ttl
        self._held: HeldLock | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def __enter__(self) -> HeldLock:
        if self._held is not None:
            raise RuntimeError("a lock context holds once: call client.lock(...) again for another hold")
        sent = time.monotonic()
        header = self._t.session.header()
        op = lock_ops.acquire(header, self._resource, self._owner, self._mode, self._timeout, self._ttl)
        held = self._held = HeldLock(self._t.run(op))
        started = lease_start(sent, self._timeout)
        self._refresher = threading.Thread(
            target=self._refresh, args=(held, started), name=f"dsync-lock-{self._resource}", daemon=True
        )
        self._refresher.start()
        return held

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._held is not None and self._refresher is not None, "__exit__ without __enter__"
        self._stop.set()
        self._refresher.join()
        try:
            self._t.run(lock_ops.release(self._t.session.header(), self._resource, self._owner))
        except NotHeld as lost:
            self._held.lost.set()
            message = (
                f"the lease on {self._resource!r} (token {self._held.token}) ended before the block did "
                f"({lost.message}); work done after that may have overlapped another holder's"
            )
            if exc is None:
                raise LockLost(message, code=lost.code, endpoint=lost.endpoint) from lost
            exc.add_note(f"dsync: {message}")
        except DsyncError as error:
            # The block's work is done; the lease ends the hold by itself within ttl.
            log.warning("could not release %r (its lease ends within %ss): %s", self._resource, self._ttl, error)

    def _refresh(self, held: HeldLock, confirmed: float) -> None:
        """Renew every ttl/3 until stopped; each refresh may retry until the lease, counted
        from the last confirmed renewal's send time, would have ended."""
        while not self._stop.wait(self._ttl / 3):
            sent = time.monotonic()
            remaining = confirmed + self._ttl - sent
            try:
                if remaining <= 0:
                    raise DsyncError(f"no refresh got through within the {self._ttl}s lease")
                op = lock_ops.refresh(self._t.session.header(), self._resource, self._owner, self._ttl)
                held.grant = self._t.run(op, timeout=remaining)
            except DsyncError as error:
                log.warning("lost the lock on %r (token %d): %s", self._resource, held.token, error)
                held.lost.set()
                return
            confirmed = sent
