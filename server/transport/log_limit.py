"""Logging that a misbehaving peer cannot turn into a flood."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable


class RateLimitedLog:
    """Logs a warning at most once per `interval` seconds for each key (say, peer and kind).

    The next warning for a key reports how many were suppressed in between, so the
    operator still learns the scale.  At most `max_keys` keys are remembered: input that
    invents a new key per message (a forged sender id) then only restarts the windows.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        # key -> (when last logged, warnings suppressed since)
        self._windows: dict[Hashable, tuple[float, int]] = {}

    def warning(self, key: Hashable, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._windows.get(key)
        if last is not None and now - last[0] < self._interval:
            self._windows[key] = (last[0], last[1] + 1)
            return
        if last is None and len(self._windows) >= self._max_keys:
            self._windows.clear()
        self._windows[key] = (now, 0)
        suppressed = last[1] if last is not None else 0
        if suppressed:
            self._logger.warning(msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._logger.warning(msg, *args)
