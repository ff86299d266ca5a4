"""An in-process network of Transports for testing replicas, with the faults of a real one.

Behaves like GrpcTransport where a replica could tell the difference: delivery is
always asynchronous (never inside `send`), each `send` reaches a peer as one batch,
messages may be lost or (with delays) reordered but never duplicated, and the receiver
gets copies, so neither side can alias the other's lists.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import replace

from server.raft.types import Message, NodeId
from server.transport.protocols import Inbox


class MemoryNetwork:
    """Connects the transports it hands out; faults are switched on and off at any time.

    Reachability is checked both when a message is sent and when it would be delivered,
    so a partition also cuts the messages already in flight.  The random choices (drops,
    delays) come from one generator seeded with `seed`, so a single-loop test replays
    exactly.
    """

    def __init__(self, seed: int = 0) -> None:
        self._inboxes: dict[NodeId, Inbox] = {}
        self._groups: dict[NodeId, int] = {}  # node -> partition side; unnamed nodes share side -1
        self._isolated: set[NodeId] = set()
        self._rng = random.Random(seed)
        self._drop = 0.0
        self._delay = (0.0, 0.0)
        self.delivered = 0  # messages handed to an inbox
        self.dropped = 0  # messages lost to faults, detached nodes or closed transports

    def transport(self, node_id: NodeId) -> MemoryTransport:
        return MemoryTransport(self, node_id)

    def attach(self, node_id: NodeId, inbox: Inbox) -> None:
        """Routes messages for `node_id` to `inbox`, replacing any earlier one (a restart)."""
        self._inboxes[node_id] = inbox

    def detach(self, node_id: NodeId) -> None:
        """Messages for `node_id` are lost from now on, as to a crashed node."""
        self._inboxes.pop(node_id, None)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Only nodes in the same group can talk; nodes named in no group form one more group.

        Replaces any earlier partition; isolation (see `isolate`) stays in force.
        """
        sides: dict[NodeId, int] = {}
        for side, group in enumerate(groups):
            for node in group:
                if node in sides:
                    raise ValueError(f"node {node!r} is in more than one partition group")
                sides[node] = side
        self._groups = sides

    def isolate(self, node: NodeId) -> None:
        """Cuts `node` off from every other node until `heal`."""
        self._isolated.add(node)

    def heal(self) -> None:
        """Ends every partition and isolation; drops and delays stay as set."""
        self._groups = {}
        self._isolated.clear()

    def set_drop(self, p: float, seed: int | None = None) -> None:
        """Loses each message independently with probability `p`; reseeds when `seed` is given."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability must be within [0, 1], got {p}")
        self._drop = p
        if seed is not None:
            self._rng.seed(seed)

    def set_delay(self, lo: float, hi: float) -> None:
        """Delivers each batch after a uniform delay in [lo, hi] seconds; batches may overtake."""
        if not 0.0 <= lo <= hi:
            raise ValueError(f"need 0 <= lo <= hi, got lo={lo} hi={hi}")
        self._delay = (lo, hi)

    def reachable(self, src: NodeId, dst: NodeId) -> bool:
        if src == dst:
            return True
        if src in self._isolated or dst in self._isolated:
            return False
        return self._groups.get(src, -1) == self._groups.get(dst, -1)

    def carry(self, src: NodeId, messages: list[Message]) -> None:
        """What a MemoryTransport of `src` sends: filtered by the faults, then scheduled."""
        by_dst: dict[NodeId, list[Message]] = {}
        drop, rng = self._drop, self._rng
        for message in messages:
            if not self.reachable(src, message.dst) or (drop and rng.random() < drop):
                self.dropped += 1
                continue
            by_dst.setdefault(message.dst, []).append(_copy(message))
        if not by_dst:
            return
        loop = asyncio.get_running_loop()
        lo, hi = self._delay
        for dst, batch in by_dst.items():
            if hi > 0.0:
                loop.call_later(rng.uniform(lo, hi), self._deliver, src, dst, batch)
            else:
                loop.call_soon(self._deliver, src, dst, batch)

    def _deliver(self, src: NodeId, dst: NodeId, batch: list[Message]) -> None:
        inbox = self._inboxes.get(dst)
        if inbox is None or not self.reachable(src, dst):
            self.dropped += len(batch)
            return
        self.delivered += len(batch)
        inbox(batch)


class MemoryTransport:
    """One node's end of a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork, node_id: NodeId) -> None:
        self._network = network
        self.node_id = node_id
        self._closed = False

    def send(self, messages: list[Message]) -> None:
        if self._closed:
            self._network.dropped += len(messages)
            return
        self._network.carry(self.node_id, messages)

    async def close(self) -> None:
        """Stops sending; messages already in flight are still delivered."""
        self._closed = True


def _copy(message: Message) -> Message:
    return replace(message, entries=list(message.entries), proposal_ids=list(message.proposal_ids))
