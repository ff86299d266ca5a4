"""RateLimitedLog: one line per key per interval, and the count of what was held back."""

from __future__ import annotations

import logging

import pytest

from server.transport.log_limit import RateLimitedLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_warning_per_key_per_interval_then_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLog(logging.getLogger("test.limit"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            log.warning(("p", "kind"), "bad input from %s", "p")
        log.warning(("q", "kind"), "bad input from %s", "q")
        clock.now = 10.0
        log.warning(("p", "kind"), "bad input from %s", "p")
    assert [r.getMessage() for r in caplog.records] == [
        "bad input from p",
        "bad input from q",
        "bad input from p (4 similar suppressed)",
    ]


def test_remembers_a_bounded_number_of_keys(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("test.limit"), interval=10.0, max_keys=3, clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        for key in range(10):
            log.warning(key, "forged sender %s", key)
        log.warning(9, "forged sender %s", 9)  # recent: still remembered, so held back
        log.warning(0, "forged sender %s", 0)  # pushed out by later keys: forgotten, so logged
    assert [r.getMessage() for r in caplog.records] == [f"forged sender {k}" for k in [*range(10), 0]]
