"""The replicated state machine interface (hashicorp/raft's FSM).

Implementations are deterministic: the same commands in the same order give the same
state and results on every node.  No clocks, randomness, asyncio, Redis or gRPC inside:
time arrives in the command, stamped by the proposer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> object:
        """Apply one committed command; the result goes back to whoever proposed it.

        Must not raise on bad input: an invalid command yields an error *result*, because
        every replica must treat it the same way and the log cannot take it back.
        """
        ...

    def snapshot(self) -> bytes:
        """The whole state, to restore a node from (or to ship to a lagging one).

        Called on a worker thread while the node's event loop goes on serving reads;
        nothing is applied meanwhile.  So it must only read the state, never change it.
        """
        ...

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        """Decode a snapshot without touching the current state; calling the result
        replaces the whole state by it, at once.  A corrupt snapshot raises here.

        The decoding (the slow part) runs on a worker thread while the event loop goes on
        serving reads of the current state; the install runs on the loop.
        """
        ...


class Restorable(Protocol):
    def prepare_restore(self, data: bytes) -> Callable[[], None]: ...


def restore(machine: Restorable, data: bytes) -> None:
    """Replace `machine`'s state by a snapshot in one go: at boot, before anything reads it."""
    machine.prepare_restore(data)()
