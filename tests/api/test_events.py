"""The event hub wakes the expectations of an event's key, and every expectation for a
restored state, whose waiting RPCs must all look again."""

from __future__ import annotations

from server.api.events import EventHub
from server.fsm.base import StateRestored
from server.fsm.queue import MessagesReady


async def test_an_event_wakes_only_the_expectations_of_its_key() -> None:
    hub = EventHub()
    with hub.expect(MessagesReady("a").key) as a, hub.expect(MessagesReady("b").key) as b:
        hub.publish(MessagesReady("a"))
        assert await a.wait(1) == MessagesReady("a")
        assert await b.wait(0.01) is None


async def test_a_restored_state_wakes_every_expectation() -> None:
    hub = EventHub()
    with hub.expect(MessagesReady("a").key) as a, hub.expect(("lock", "r", "o")) as lock:
        hub.publish(StateRestored())
        assert await a.wait(1) == StateRestored() and await lock.wait(1) == StateRestored()
        with hub.expect(MessagesReady("a").key) as again:  # woken ones are gone: a new one waits anew
            hub.publish(MessagesReady("a"))
            assert await again.wait(1) == MessagesReady("a")
