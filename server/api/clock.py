"""The leader's clock: the only source of time for the state machines.

While this node leads, it proposes a `Clock` entry every `interval` seconds with its
term and monotonic reading; leases, visibility timeouts, TTLs and lock waits advance
with them on every replica alike.  Followers propose nothing.

The reading is taken as the entry is queued, and a leader logs its own and forwarded
proposals in the order they reached it (Replica._step_commands): so a reading follows, in
the log, every command that arrived before it was taken and precedes every one that
arrived after.  A deadline that starts at the first clock entry after its command starts
no earlier than the command arrived, and a refresh that arrived before the reading that
ends a lease is applied first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from dsync.fsm.v1 import command_pb2
from server.raft import Role
from server.replica.errors import ReplicaError

logger = logging.getLogger(__name__)


class LeaderView(Protocol):
    @property
    def role(self) -> Role: ...

    @property
    def term(self) -> int: ...

    async def propose(self, command: bytes) -> object: ...


async def run_clock(replica: LeaderView, interval: float = 0.1) -> None:
    while True:
        if replica.role is Role.LEADER:
            reading = command_pb2.Command(
                clock=command_pb2.Clock(term=replica.term, monotonic_ms=time.monotonic_ns() // 1_000_000)
            )
            with contextlib.suppress(ReplicaError):
                await replica.propose(reading.SerializeToString())
        await asyncio.sleep(interval)
