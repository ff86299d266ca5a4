"""When to retry a call and how long to wait: shared by the sync and asyncio transports.

Only "try again, perhaps elsewhere" answers are retried: UNAVAILABLE (no leader, node
down, leader changed) and an attempt that ran out of time while the call still has some.
A retried write keeps its request header, so the server's session makes it take effect
once however many attempts reach it.  Everything else is the caller's to decide.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DeadlineExceeded, DsyncError, Unavailable


@dataclass(frozen=True)
class RetryPolicy:
    """Budgets for one call, in seconds.

    `timeout` bounds a whole call, retries included, on top of any wait the call asks the
    server for (a lock's `timeout`, a consumer's long poll).  `attempt_timeout` bounds one
    attempt beyond that wait: longer than the server's own 5 s commit wait, so a slow
    commit is answered by the server (with a message saying what happened) before the
    client gives up on the attempt.  Backoff between attempts grows from
    `initial_backoff` by `multiplier` up to `max_backoff`, each delay drawn at random from
    its upper half so that clients retrying together spread out.
    """

    timeout: float = 10.0
    attempt_timeout: float = 6.0
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        # Every comparison with NaN is False, so "<= 0" lets it through, and a NaN
        # deadline is never reached: the call would retry forever.
        for name in ("timeout", "attempt_timeout", "initial_backoff", "max_backoff"):
            check_seconds(f"RetryPolicy.{name}", getattr(self, name))
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"RetryPolicy.multiplier must be a finite number of at least 1, not {self.multiplier!r}")


def check_seconds(name: str, value: float) -> None:
    """Refuse a duration no deadline can be computed from: NaN, infinite, zero or negative."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds above 0, not {value:g}")


def retryable(error: DsyncError) -> bool:
    """Whether another attempt (on another node, after a pause) may succeed."""
    return isinstance(error, Unavailable)


class Attempts:
    """One call's retry budget: the time each attempt may take and the pause before the next.

    `wait` is the server-side wait the call asks for; it extends the overall deadline and
    every attempt's timeout, since the server legitimately holds the call that long.
    `write` says whether giving up leaves the outcome unknown.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        wait: float = 0.0,
        write: bool = False,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not math.isfinite(wait):
            raise ValueError(f"a call's wait (a lock's timeout, a long poll) must be finite seconds, not {wait:g}")
        self._policy = policy
        self._wait = wait
        self._write = write
        self._rng = rng or random.Random()
        self._clock = clock
        self._started = clock()
        self._deadline = self._started + policy.timeout + wait
        self.failures = 0

    def remaining(self) -> float:
        return self._deadline - self._clock()

    def attempt_timeout(self) -> float:
        """Seconds the next attempt may take: its wait plus attempt_timeout, within the deadline."""
        return max(0.001, min(self.remaining(), self._wait + self._policy.attempt_timeout))

    def pause_after(self, error: DsyncError) -> float:
        """Seconds to sleep before retrying after `error`; raises when it is final or time is up."""
        if not retryable(error):
            raise error
        self.failures += 1
        policy = self._policy
        upper = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (self.failures - 1))
        pause = self._rng.uniform(upper / 2, upper)
        if self.remaining() <= pause:
            raise self._gave_up(error)
        return pause

    def _gave_up(self, last: DsyncError) -> Unavailable:
        kind = DeadlineExceeded if isinstance(last, DeadlineExceeded) else Unavailable
        elapsed = self._clock() - self._started
        budget = self._policy.timeout + self._wait
        unknown = " -- the write may or may not have taken effect" if self._write else ""
        return kind(
            f"gave up after {self.failures} failed attempt(s) in {elapsed:.1f}s (another would end past "
            f"the call's {budget:g}s timeout); last answer, from {last.endpoint}: {last.message}{unknown}; "
            "retry later, and check that the endpoints name running nodes of the cluster",
            code=last.code,
            endpoint=last.endpoint,
        )
