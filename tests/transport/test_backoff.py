"""Backoff: jittered, doubling, capped, and back to the start after a success."""

from __future__ import annotations

import random

import pytest

from server.transport.backoff import Backoff


def test_delays_double_up_to_the_cap_within_the_upper_half_of_each_step() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for step in steps:
        assert step / 2 <= backoff.next() <= step


def test_reset_starts_over_from_the_base() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1


def test_delays_are_jittered() -> None:
    delays = {Backoff(0.1, 1.0, random.Random(seed)).next() for seed in range(20)}
    assert len(delays) == 20


def test_nonsense_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(0.0, 1.0)
