"""What can go wrong, as exceptions a caller can branch on instead of raw grpc.RpcError.

Every exception's message is the server's own explanation (it names the field or says
what to do next) unless the client itself gave up, in which case it says why and what to
check.  `code` keeps the gRPC status for callers that need it.

    DsyncError
    ├── Unavailable          no leader / no node answered in time: retry later
    │   └── DeadlineExceeded the call's overall deadline passed: the outcome is unknown
    ├── Overloaded           RESOURCE_EXHAUSTED: back off, or make room (full queue)
    ├── InvalidArgument      a request field is wrong: fix the call, retrying won't help
    ├── NotFound             no such message (or key, or thing)
    ├── FailedPrecondition   the state does not allow it now
    │   ├── NotHeld          release/refresh of a lock the owner does not hold
    │   │   └── LockLost     a `with client.lock(...)` block lost its lease before the end (or the start)
    │   └── VersionMismatch  compare_and_set found another version
    ├── LockConflict         ABORTED: the lock stayed busy for the whole timeout
    │   └── Deadlock         waiting would close a cycle of waiters: nothing changed
    └── OutcomeUnknown       a retried write's result is forgotten: it may or may not have happened
"""

from __future__ import annotations

import grpc


class DsyncError(Exception):
    """Base of every error the client raises.

    `code` is the gRPC status the server answered with (None when the client gave up on
    its own); `endpoint` the node that answered, when one did.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.endpoint = endpoint


class Unavailable(DsyncError):
    """No node could do it in time (no leader, nodes down or cut off): retry later.

    A write that ends in Unavailable may or may not have taken effect: the message of the
    last attempt says which, when the server knew.
    """


class DeadlineExceeded(Unavailable):
    """The call's overall deadline passed before an answer: the outcome is unknown."""


class Overloaded(DsyncError):
    """RESOURCE_EXHAUSTED: the cluster sheds load or a capacity is reached; back off."""


class InvalidArgument(DsyncError):
    """A request field is invalid (the message names it): fix the call, a retry won't help."""


class NotFound(DsyncError):
    """The thing named does not exist (e.g. a message already acked or dead-lettered)."""


class FailedPrecondition(DsyncError):
    """The current state does not allow the operation (the message says why)."""


class NotHeld(FailedPrecondition):
    """A release or refresh named a lock its owner does not hold (released or expired)."""


class LockLost(NotHeld):
    """A `with client.lock(...)` block ended after its lease was lost, or never started
    because its lease may have ended before the grant's answer arrived.

    Whatever a block did after the loss may have overlapped with another holder:
    protected services should have checked the fencing token.
    """


class VersionMismatch(FailedPrecondition):
    """compare_and_set found the key at another version: read it again, then retry."""


class LockConflict(DsyncError):
    """ABORTED: the lock was busy for the whole timeout; retry later or wait longer."""


class Deadlock(LockConflict):
    """Waiting would close a cycle of owners waiting for each other; nothing changed.

    Release a lock in the cycle, or acquire resources in one global order.
    """


class OutcomeUnknown(DsyncError):
    """A retried write's session forgot its result: the write may or may not have taken
    effect.  Read the state it would have changed before writing again (another call is
    a new write).  The client gives each write in flight a session of its own, so this
    means the session was lost (idle for an hour) or another process uses this client id.
    """


# How a node words a retry whose session dropped its result (server/fsm/router.py): a
# FAILED_PRECONDITION that, unlike every other, says nothing about the resource named.
_FORGOTTEN_PREFIX = "header.sequence "
_FORGOTTEN_PHRASE = "no longer keeps"


_BY_CODE: dict[grpc.StatusCode, type[DsyncError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    # A node shutting down cancels the calls it holds; they never finished there.
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: LockConflict,
}


def from_status(
    code: grpc.StatusCode,
    details: str,
    endpoint: str,
    refine: type[DsyncError] | None = None,
) -> DsyncError:
    """The exception for a gRPC status: the generic class for `code`, or `refine` when the
    operation knows better (a FAILED_PRECONDITION from Release means NotHeld) and
    `refine` is a kind of that class.  A session that forgot a write's result says
    nothing about the state the write names, so that is OutcomeUnknown whatever `refine`."""
    kind = _BY_CODE.get(code, DsyncError)
    if kind is FailedPrecondition and details.startswith(_FORGOTTEN_PREFIX) and _FORGOTTEN_PHRASE in details:
        message = (
            f"the write may or may not have taken effect: {details}; read what it would have changed "
            "before writing again"
        )
        return OutcomeUnknown(message, code=code, endpoint=endpoint)
    if kind is LockConflict and details.startswith("deadlock"):
        kind = Deadlock
    if refine is not None and issubclass(refine, kind):
        kind = refine
    message = details or f"the server answered {code.name} without a message"
    return kind(message, code=code, endpoint=endpoint)


def from_rpc_error(exc: grpc.RpcError, endpoint: str, refine: type[DsyncError] | None = None) -> DsyncError:
    """The exception for a failed call of either flavour (sync grpc.Call or aio error)."""
    if isinstance(exc, (grpc.Call, grpc.aio.AioRpcError)):
        return from_status(exc.code(), exc.details() or "", endpoint, refine)
    return DsyncError(f"{endpoint} failed the call without a status: {exc!r}", endpoint=endpoint)
