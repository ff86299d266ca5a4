"""What every dsync state machine (locks, queue, cache) shares with the router.

A component is deterministic: it sees the command, the log index and the state-machine
time, and nothing else.  It answers with a protobuf response or a `Refusal`, and may
`emit` events for the node's waiting RPCs (a lock granted to a waiter, a message ready
for a long poll).  Events are observations only: they never feed back into the state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message as ProtoMessage


class Code(enum.IntEnum):
    """The google.rpc.Code values a state machine may refuse with."""

    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10


@dataclass(frozen=True, slots=True)
class Refusal:
    """A command refused the same way on every replica; it changed nothing."""

    code: Code
    message: str


Result = ProtoMessage | Refusal
Emit = Callable[[object], None]

# The key of an event for every waiting RPC, whatever it waits for.
EVERY_WAIT = ("every wait",)


@dataclass(frozen=True, slots=True)
class StateRestored:
    """Emitted once a restored state is installed.  A follower that installs a leader's
    snapshot applies none of the entries whose apply would have announced what they
    decided (a message ready, a wait granted or ended), so every waiting RPC looks again
    at the new state: what each waits for is known only to the RPC itself."""

    key: tuple[str] = EVERY_WAIT


@dataclass(frozen=True, slots=True)
class ApplyContext:
    index: int  # the log index of the command being applied
    now_ms: int  # state-machine time: milliseconds, advanced only by the leader's clock entries
    emit: Emit


class Component(Protocol):
    """One service's share of the replicated state.

    Only `apply`, `advance` and what `prepare_restore` returns change it, and only the
    replica calls them.  Everything else a component offers (the services' reads,
    `snapshot`) must leave it untouched -- no lazy clean-up: `snapshot` runs on a worker
    thread while the event loop goes on serving those reads.
    """

    def apply(self, command: bytes, ctx: ApplyContext) -> Result:
        """Apply one of this component's commands (its own protobuf, serialized)."""
        ...

    def advance(self, ctx: ApplyContext) -> None:
        """Time moved to ctx.now_ms: expire leases, deadlines and timeouts now due."""
        ...

    def snapshot(self) -> bytes: ...

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        """As `StateMachine.prepare_restore`: decode without touching the state; the result installs."""
        ...
