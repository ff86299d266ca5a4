"""Delays between attempts to reach a peer that is down."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential delays with jitter.

    Jitter keeps the nodes that lost the same peer from knocking on it in lockstep when
    it comes back.  Each delay is drawn from the upper half of its step, never near
    zero, so a peer that refuses connections at once cannot turn a sender into a busy
    loop.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self._base = base
        self._cap = cap
        self._rng = rng or random.Random()
        self._step = base

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the step up to the cap."""
        step = self._step
        self._step = min(self._cap, step * 2)
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        """Called after a success, so the next failure is retried quickly again."""
        self._step = self._base
