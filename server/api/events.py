"""Where RPCs wait for what the state machine decides later (a queued lock granted, a
message published for a long poll).  The router's `emit` feeds `publish`; an RPC calls
`expect` *before* proposing, so an event decided in the same apply is never missed."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Hashable

from server.fsm.base import EVERY_WAIT


class Expectation:
    """One registered wait; always `close()` it (use `with`)."""

    def __init__(self, hub: EventHub, key: Hashable) -> None:
        self._hub = hub
        self.key = key
        self.future: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def wait(self, timeout: float) -> object | None:
        """The event, or None if none came within `timeout` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.future), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        self._hub._forget(self)

    def __enter__(self) -> Expectation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    def __init__(self) -> None:
        self._waiting: defaultdict[Hashable, list[Expectation]] = defaultdict(list)

    def expect(self, key: Hashable) -> Expectation:
        expectation = Expectation(self, key)
        self._waiting[key].append(expectation)
        return expectation

    def publish(self, event: object) -> None:
        """Wake every expectation of the event's `key` (every expectation for EVERY_WAIT);
        events nobody waits for vanish."""
        key = getattr(event, "key", None)
        if key is None:
            return
        if key == EVERY_WAIT:
            woken = [e for waiting in self._waiting.values() for e in waiting]
            self._waiting.clear()
        else:
            woken = self._waiting.pop(key, [])
        for expectation in woken:
            if not expectation.future.done():
                expectation.future.set_result(event)

    def _forget(self, expectation: Expectation) -> None:
        waiting = self._waiting.get(expectation.key)
        if waiting is not None:
            if expectation in waiting:
                waiting.remove(expectation)
            if not waiting:
                del self._waiting[expectation.key]
        if not expectation.future.done():
            expectation.future.cancel()
