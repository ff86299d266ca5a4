"""`with client.lock(...) as held:` -- a lock held for a block, its lease kept alive.

The lease is what makes a lock safe against a holder that dies: it ends `ttl` seconds
after the grant or the last refresh.  The block starts only on a lease that is known to
have most of its ttl left: the grant may have come long before its answer (a wait for a
busy lock, an answer lost with a node and asked for again), so an answer later than a
third of the ttl after the first attempt was sent is confirmed by a refresh first, and
a lease that turns out to have ended raises LockLost instead of running the block.
While the block runs, a background thread refreshes the lease every ttl/3; if a refresh
fails for good (the cluster says it is not held, or no refresh got through before the
lease would have ended) `held.lost` is set and the block should stop acting on the
protected resource.  The fencing token `held.token` lets the resource itself refuse a
holder that did not notice in time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from types import TracebackType

from . import lock_ops
from .errors import DsyncError, LockLost, NotHeld
from .lease import answered_in_time, block_owner, confirmation, lost_before_start, release_timeout, same_hold
from .lock_ops import Grant, Mode
from .retry import check_seconds
from .transport import Transport

log = logging.getLogger("dsync_client")


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
        check_seconds("ttl (the lease)", ttl)
        self._t = transport
        self._resource = resource
        self._owner = owner or block_owner(transport.sessions.client_id)
        self._mode = mode
        self._timeout = timeout
        self._ttl = ttl
        self._held: HeldLock | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def __enter__(self) -> HeldLock:
        if self._held is not None:
            raise RuntimeError("a lock context holds once: call client.lock(...) again for another hold")
        sent = time.monotonic()  # before the first attempt: whichever attempt was granted, it was after this
        op = lock_ops.acquire(self._resource, self._owner, self._mode, self._timeout, self._ttl)
        held = self._held = HeldLock(self._t.run(op))
        try:
            started = sent if answered_in_time(sent, self._ttl) else self._confirm(held)
        except DsyncError:
            # Free it for others if it is still held.
            release = lock_ops.release(self._resource, self._owner)
            with contextlib.suppress(DsyncError):
                self._t.run(release, timeout=release_timeout(self._ttl, self._t.policy))
            raise
        self._refresher = threading.Thread(
            target=self._refresh, args=(held, started), name=f"dsync-lock-{self._resource}", daemon=True
        )
        self._refresher.start()
        return held

    def _confirm(self, held: HeldLock) -> float:
        """Refresh a lease granted too long ago to trust; returns when the lease now
        counts from.  LockLost if it ended, could not be confirmed, or was confirmed too late."""
        sent = time.monotonic()
        op = lock_ops.refresh(self._resource, self._owner, self._ttl)
        try:
            held.grant = confirmation(sent, self._ttl, held.token, self._t.run(op, timeout=self._ttl / 3))
        except DsyncError as error:
            held.lost.set()
            raise lost_before_start(self._resource, held.token, error.message) from error
        return sent

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._held is not None and self._refresher is not None, "__exit__ without __enter__"
        self._stop.set()
        self._refresher.join()
        try:
            self._t.run(lock_ops.release(self._resource, self._owner))
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
                op = lock_ops.refresh(self._resource, self._owner, self._ttl)
                held.grant = same_hold(held.token, self._t.run(op, timeout=remaining))
            except DsyncError as error:
                log.warning("lost the lock on %r (token %d): %s", self._resource, held.token, error)
                held.lost.set()
                return
            confirmed = sent
