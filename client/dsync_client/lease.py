"""The rules a lock held for a block follows, the same for `with` (locks.py) and
`async with` (aio_locks.py): whose hold it is, when its grant may start the block,
which renewals keep it, and how long to try freeing one whose block will not start.
See locks.py for why the lease is trusted only this way."""

from __future__ import annotations

import itertools
import time

from .errors import DsyncError, LockLost
from .lock_ops import Grant
from .retry import RetryPolicy

_blocks = itertools.count(1)


def block_owner(client_id: str) -> str:
    """An owner name for one `with` block: the client's id and a counter."""
    return f"{client_id}/{next(_blocks)}"


def answered_in_time(sent: float, ttl: float) -> bool:
    """Whether an Acquire whose first attempt was sent at `sent` was answered within the
    refresh period, ttl/3.  Its grant came after `sent`, so the lease then has over two
    thirds of its ttl left; a later answer may carry a grant whose lease is mostly gone,
    or over, and is confirmed by a refresh before the block starts."""
    return time.monotonic() - sent < ttl / 3


def confirmation(sent: float, ttl: float, token: int, renewal: Grant) -> Grant:
    """`renewal`, the answer to a refresh sent at `sent` to confirm a late grant, if it may
    start the block: it renewed this hold, and within ttl/3, as a grant must be answered --
    later, the block could start with little of its lease left and outlive it before the
    first periodic refresh.  DsyncError otherwise."""
    same_hold(token, renewal)
    if not answered_in_time(sent, ttl):
        raise DsyncError(f"confirming it took over a third of its {ttl:g}s ttl")
    return renewal


def same_hold(token: int, renewal: Grant) -> Grant:
    """`renewal` if it renewed the hold with fencing token `token`.  Another token means
    the owner now holds under another grant (the server refuses that too; this guards the
    block's token against any answer that is not its own hold's)."""
    if renewal.token != token:
        raise DsyncError(f"a refresh answered for token {renewal.token}, not this block's {token}")
    return renewal


def lost_before_start(resource: str, token: int, why: str) -> LockLost:
    return LockLost(
        f"the lease on {resource!r} (token {token}) may have ended before the block could start ({why}); "
        "the block did not run: take the lock again"
    )


def release_timeout(ttl: float, policy: RetryPolicy) -> float:
    """How long to try freeing a hold whose block will not start: no longer than a call
    may take, nor than its lease lasts, as the lease frees it by itself after that."""
    return min(ttl, policy.timeout)
