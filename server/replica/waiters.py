"""Callers waiting on the replica: proposals until their entry applies, reads until a read point applies.

Each caller removes its own waiter when it stops waiting (answer, timeout or
cancellation), so nothing lingers once it has gone.  A cancelled caller's future is
done before its removal runs, hence the `done()` checks before settling one.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from server.raft import ReadState

from .errors import ReplicaError


@dataclass(slots=True, eq=False)
class Proposal:
    request_id: int
    data: bytes  # the log entry's data: header and command
    future: asyncio.Future[object]
    started: float  # loop time, for the commit latency
    proposal_id: int | None = None  # set once the core has taken it

    @property
    def in_core(self) -> bool:
        """Whether it may have entered a log, and so may commit."""
        return self.proposal_id is not None


class Proposals:
    """Proposals in flight, by request id (for apply) and by the core's proposal id (for outcomes)."""

    __slots__ = ("_by_request", "_by_pid")

    def __init__(self) -> None:
        self._by_request: dict[int, Proposal] = {}
        self._by_pid: dict[int, Proposal] = {}

    def __len__(self) -> int:
        return len(self._by_request)

    def __iter__(self) -> Iterator[Proposal]:
        return iter(list(self._by_request.values()))

    def add(self, proposal: Proposal) -> None:
        self._by_request[proposal.request_id] = proposal

    def taken(self, proposal: Proposal, proposal_id: int) -> None:
        proposal.proposal_id = proposal_id
        self._by_pid[proposal_id] = proposal

    def by_request(self, request_id: int) -> Proposal | None:
        return self._by_request.get(request_id)

    def by_pid(self, proposal_id: int) -> Proposal | None:
        return self._by_pid.get(proposal_id)

    def forget(self, proposal: Proposal) -> None:
        self._by_request.pop(proposal.request_id, None)
        if proposal.proposal_id is not None:
            self._by_pid.pop(proposal.proposal_id, None)


class Reads:
    """Read barriers: asked of the core, then answered, then held until their index is applied."""

    __slots__ = ("_waiting", "_ready_at")

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[int]] = {}
        self._ready_at: list[tuple[int, bytes]] = []  # heap of (read index, context)

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, context: bytes, future: asyncio.Future[int]) -> None:
        self._waiting[context] = future

    def forget(self, context: bytes) -> None:
        self._waiting.pop(context, None)

    def answer(self, state: ReadState, applied: int, error: Callable[[ReadState], ReplicaError]) -> None:
        """Fail the read, finish it if its index is applied, or hold it until it is."""
        future = self._waiting.get(state.context)
        if future is None or future.done():
            return  # its caller gave up already
        if state.reason is not None:
            future.set_exception(error(state))
        elif state.index <= applied:
            future.set_result(state.index)
        else:
            heapq.heappush(self._ready_at, (state.index, state.context))

    def release(self, applied: int) -> None:
        """Finish every held read whose index is now applied."""
        held = self._ready_at
        while held and held[0][0] <= applied:
            index, context = heapq.heappop(held)
            future = self._waiting.get(context)
            if future is not None and not future.done():
                future.set_result(index)

    def fail_all(self, error: Callable[[], ReplicaError]) -> None:
        waiting, self._waiting, self._ready_at = self._waiting, {}, []
        for future in waiting.values():
            if not future.done():
                future.set_exception(error())
