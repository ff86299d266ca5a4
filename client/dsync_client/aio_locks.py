"""`async with client.lock(...) as held:` -- the asyncio twin of locks.py: the lease is
confirmed before the block and refreshed during it the same way, by a task instead of a
thread, and `held.lost` is an asyncio.Event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType

from . import lock_ops
from .aio_transport import AsyncTransport
from .errors import DsyncError, LockLost, NotHeld
from .lease import answered_in_time, block_owner, confirmation, lost_before_start, release_timeout, same_hold
from .lock_ops import Grant, Mode
from .retry import check_seconds

log = logging.getLogger("dsync_client")


class AsyncHeldLock:
    """The hold an `async with client.lock(...)` block has: `token` is the fencing token;
    `lost` is set as soon as the lease may have ended without the block being told."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.lost = asyncio.Event()

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


class AsyncLockContext:
    """Acquires on enter, refreshes while inside, releases on exit (exceptions included)."""

    def __init__(
        self, transport: AsyncTransport, resource: str, owner: str | None, mode: Mode, timeout: float, ttl: float
    ) -> None:
        check_seconds("ttl (the lease)", ttl)
        self._t = transport
        self._resource = resource
        self._owner = owner or block_owner(transport.sessions.client_id)
        self._mode = mode
        self._timeout = timeout
        self._ttl = ttl
        self._held: AsyncHeldLock | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncHeldLock:
        if self._held is not None:
            raise RuntimeError("a lock context holds once: call client.lock(...) again for another hold")
        sent = time.monotonic()  # before the first attempt: whichever attempt was granted, it was after this
        op = lock_ops.acquire(self._resource, self._owner, self._mode, self._timeout, self._ttl)
        held = self._held = AsyncHeldLock(await self._t.run(op))
        try:
            started = sent if answered_in_time(sent, self._ttl) else await self._confirm(held)
        except DsyncError:
            # Free it for others if it is still held.
            release = lock_ops.release(self._resource, self._owner)
            with contextlib.suppress(DsyncError):
                await self._t.run(release, timeout=release_timeout(self._ttl, self._t.policy))
            raise
        self._refresher = asyncio.create_task(self._refresh(held, started), name=f"dsync-lock-{self._resource}")
        return held

    async def _confirm(self, held: AsyncHeldLock) -> float:
        """Refresh a lease granted too long ago to trust (see LockContext._confirm)."""
        sent = time.monotonic()
        op = lock_ops.refresh(self._resource, self._owner, self._ttl)
        try:
            held.grant = confirmation(sent, self._ttl, held.token, await self._t.run(op, timeout=self._ttl / 3))
        except DsyncError as error:
            held.lost.set()
            raise lost_before_start(self._resource, held.token, error.message) from error
        return sent

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._held is not None and self._refresher is not None, "__aexit__ without __aenter__"
        self._refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._refresher
        try:
            await self._t.run(lock_ops.release(self._resource, self._owner))
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

    async def _refresh(self, held: AsyncHeldLock, confirmed: float) -> None:
        """Renew every ttl/3 until cancelled; each refresh may retry until the lease, counted
        from the last confirmed renewal's send time, would have ended."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            sent = time.monotonic()
            remaining = confirmed + self._ttl - sent
            try:
                if remaining <= 0:
                    raise DsyncError(f"no refresh got through within the {self._ttl}s lease")
                op = lock_ops.refresh(self._resource, self._owner, self._ttl)
                held.grant = same_hold(held.token, await self._t.run(op, timeout=remaining))
            except DsyncError as error:
                log.warning("lost the lock on %r (token %d): %s", self._resource, held.token, error)
                held.lost.set()
                return
            confirmed = sent
