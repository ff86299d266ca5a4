"""The public LockService: writes through the log, reads from this node's replica.

A blocking Acquire is one log entry: the state machine either grants it or queues it.
A queued request's grant, timeout or deadlock-free end is decided later by the state
machine -- committed, the same on every replica -- and announced as an event on each
node; the RPC registered for that event *before* proposing, so it cannot miss one
decided in the very apply that queued it.  The servicer only reports the decision, and
only its own wait's: events come by (resource, owner), and the same owner's earlier
wait for the resource may end while this request is in flight, so the RPC matches the
event's wait id against the one its Queued outcome names and listens again otherwise.

Its own wall-clock limit (timeout plus `WAIT_GRACE_S`) is a safety net for when cluster
time stalls (no leader, so no clock entries): it then proposes a Withdraw, whose
committed result says whether the lock was granted after all, so the RPC never answers
ABORTED for a wait that could still be granted.

Reads (Validate, GetLock, ListLocks) are linearizable by default: a read barrier, then
this node's replica.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import grpc

from dsync.fsm.v1 import lock_pb2 as fsm_lock_pb2
from dsync.v1 import common_pb2, lock_pb2, lock_pb2_grpc
from server.api import lock_requests
from server.api.commands import execute
from server.api.context import ServiceContext
from server.api.errors import ServiceError, rpc
from server.api.events import Expectation
from server.fsm import lock_views
from server.fsm.lock import LockGranted, LockMachine, LockWaitEnded, wait_key
from server.fsm.lock_state import Mode
from server.replica.stats import Histogram

Context = grpc.aio.ServicerContext[object, object]

# Beyond its timeout, how long a waiting Acquire trusts cluster time to end the wait
# before withdrawing it: covers a leader election (about a second) and commit latency.
WAIT_GRACE_S = 5.0

# Seconds a queued Acquire may wait: up to lock_rules.MAX_TIMEOUT_MS (an hour).
WAIT_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


@dataclass
class LockStats:
    """How long this node's queued Acquires waited, by how the wait ended (node-local)."""

    granted: Histogram = field(default_factory=lambda: Histogram(WAIT_BOUNDS))
    not_granted: Histogram = field(default_factory=lambda: Histogram(WAIT_BOUNDS))


class LockServicer(lock_pb2_grpc.LockServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        locks = ctx.machine.components.get("lock")
        if not isinstance(locks, LockMachine):
            raise ValueError("the lock service needs a LockMachine as the state machine's 'lock' component")
        self._ctx = ctx
        self._locks = locks
        self.stats = LockStats()

    @rpc
    async def Acquire(self, request: lock_pb2.AcquireRequest, context: Context) -> lock_pb2.AcquireResponse:
        command = lock_requests.acquire(request)
        with ExitStack() as listening:
            expectation = listening.enter_context(self._ctx.hub.expect(wait_key(command.resource, command.owner)))
            outcome = await self._propose(fsm_lock_pb2.LockCommand(acquire=command), request.header)
            if outcome.HasField("granted"):
                return self._still_held(outcome.granted, command)
            began = time.monotonic()
            waited = self.stats.not_granted
            try:
                response = await self._await_grant(listening, expectation, command, outcome.queued.wait_id)
                waited = self.stats.granted
                return response
            finally:
                waited.observe(time.monotonic() - began)

    @rpc
    async def Release(self, request: lock_pb2.ReleaseRequest, context: Context) -> lock_pb2.ReleaseResponse:
        command = fsm_lock_pb2.LockCommand(release=lock_requests.release(request))
        return await execute(self._ctx.replica, "lock", command, request.header, lock_pb2.ReleaseResponse)

    @rpc
    async def Refresh(self, request: lock_pb2.RefreshRequest, context: Context) -> lock_pb2.RefreshResponse:
        command = fsm_lock_pb2.LockCommand(refresh=lock_requests.refresh(request))
        renewed = await execute(self._ctx.replica, "lock", command, request.header, lock_pb2.RefreshResponse)
        return self._still_renewed(renewed)

    @rpc
    async def Validate(self, request: lock_pb2.ValidateRequest, context: Context) -> lock_pb2.ValidateResponse:
        lock_requests.check_validate(request)
        await self._barrier(request.consistency)
        return self._locks.validate(request.resource, request.owner, request.fencing_token, self._now_ms)

    @rpc
    async def GetLock(self, request: lock_pb2.GetLockRequest, context: Context) -> lock_pb2.GetLockResponse:
        lock_requests.check_name("resource", request.resource)
        await self._barrier(request.consistency)
        return lock_pb2.GetLockResponse(lock=self._locks.describe(request.resource, self._now_ms))

    @rpc
    async def ListLocks(self, request: lock_pb2.ListLocksRequest, context: Context) -> lock_pb2.ListLocksResponse:
        lock_requests.check_list(request)
        limit = lock_requests.page_size(request)
        await self._barrier(request.consistency)
        locks, next_token = self._locks.page(request.prefix, request.page_token, limit, self._now_ms)
        return lock_pb2.ListLocksResponse(locks=locks, next_page_token=next_token)

    # ------------------------------------------------------------------ helpers

    @property
    def _now_ms(self) -> int:
        return self._ctx.machine.now_ms

    async def _barrier(self, consistency: common_pb2.Consistency.ValueType) -> None:
        if lock_requests.linearizable(consistency):
            await self._ctx.replica.read_barrier()

    async def _propose(
        self, command: fsm_lock_pb2.LockCommand, header: common_pb2.RequestHeader
    ) -> fsm_lock_pb2.LockAcquireOutcome:
        return await execute(self._ctx.replica, "lock", command, header, fsm_lock_pb2.LockAcquireOutcome)

    def _still_held(
        self, granted: lock_pb2.AcquireResponse, command: fsm_lock_pb2.LockCommand.Acquire
    ) -> lock_pb2.AcquireResponse:
        """The grant, as it stands now.  A retry answered from the client's session may carry
        a grant whose lease has ended since (and the lock moved on): never hand that out."""
        held = self._locks.holding(command.resource, command.owner, Mode(command.mode), self._now_ms)
        if held is None or held.fencing_token != granted.fencing_token:
            raise ServiceError(
                grpc.StatusCode.ABORTED,
                f"this request's grant of {command.resource!r} (token {granted.fencing_token}) has already "
                f"ended, and {command.owner} does not hold it under that token now: acquire again with a new request",
            )
        return held

    def _still_renewed(self, renewed: lock_pb2.RefreshResponse) -> lock_pb2.RefreshResponse:
        """The renewed lease, as it stands now.  A retry answered from the client's session
        carries the first attempt's answer, whose lease may have ended since (and the lock
        moved on): never report that one as renewed, nor a later hold of the same owner's
        (an upgrade, a new Acquire) in its place -- its lease is not the one renewed."""
        held = self._locks.holding(renewed.resource, renewed.owner, Mode.SHARED, self._now_ms)
        if held is None or held.fencing_token != renewed.fencing_token:
            now = "holds nothing" if held is None else f"holds it under token {held.fencing_token}"
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the hold of {renewed.resource!r} this request renewed (token {renewed.fencing_token}) has "
                f"ended since, and {renewed.owner} {now}: refresh the hold you have, or acquire again",
            )
        return lock_views.renewal(held)

    async def _await_grant(
        self, listening: ExitStack, expectation: Expectation, command: fsm_lock_pb2.LockCommand.Acquire, wait_id: int
    ) -> lock_pb2.AcquireResponse:
        """The end of wait `wait_id`, as the state machine decides it.  `expectation` was
        registered before the wait could end; replacements are registered on `listening`."""
        resource, owner, mode = command.resource, command.owner, Mode(command.mode)
        deadline = time.monotonic() + command.timeout_ms / 1000 + WAIT_GRACE_S
        while True:
            if not expectation.future.done() and not self._locks.wait_queued(resource, owner, wait_id):
                # The wait ended before this expectation was registered: a retry answered
                # "queued" from the client's session, an Acquire that joined the owner's
                # wait, or a new listener after another wait's event.  Its event is gone.
                held = self._locks.holding(resource, owner, mode, self._now_ms)
                if held is not None:
                    return held
                raise ServiceError(
                    grpc.StatusCode.ABORTED,
                    f"this request's wait for {resource!r} (wait {wait_id}) already ended, and {owner} does not "
                    f"hold it {mode.adverb} now: acquire again with a new request",
                )
            event = await expectation.wait(max(0.0, deadline - time.monotonic()))
            if event is None:
                return await self._withdraw(command, wait_id)
            if isinstance(event, LockGranted) and event.wait_id == wait_id:
                return event.response
            if isinstance(event, LockWaitEnded) and event.wait_id == wait_id:
                raise ServiceError(grpc.StatusCode.ABORTED, event.message)
            # Another wait of this owner's for this resource ended (an earlier request's):
            # not this request's answer.  Listen again; the check above catches our own
            # wait ending in between.
            expectation = listening.enter_context(self._ctx.hub.expect(expectation.key))

    async def _withdraw(self, command: fsm_lock_pb2.LockCommand.Acquire, wait_id: int) -> lock_pb2.AcquireResponse:
        """Cluster time stalled past the wait's timeout: end it through the log, whose
        answer says whether it was granted after all."""
        withdraw = fsm_lock_pb2.LockCommand.Withdraw(
            resource=command.resource, owner=command.owner, mode=command.mode, wait_id=wait_id
        )
        outcome = await self._propose(fsm_lock_pb2.LockCommand(withdraw=withdraw), common_pb2.RequestHeader())
        return outcome.granted  # a Withdraw either grants or is refused (raised by execute)


def add_lock_service(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    """Serve LockService on `server`; returns its full name, for reflection."""
    lock_pb2_grpc.add_LockServiceServicer_to_server(LockServicer(ctx), server)
    return lock_pb2.DESCRIPTOR.services_by_name["LockService"].full_name
