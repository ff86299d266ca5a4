"""The one map from what can go wrong to gRPC status codes, and the decorator that
applies it to every servicer method.

UNAVAILABLE means "try again, perhaps on another node": the message says whether the
write may already have happened, so a client knows if a retry needs its request id.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.fsm.base import Code, Refusal
from server.replica.errors import (
    CommitUnknown,
    NoLeader,
    NotLeader,
    Overloaded,
    ProposalDropped,
    ReadTimeout,
    ReplicaError,
    Stopped,
)

_REPLICA_CODES: tuple[tuple[type[ReplicaError], grpc.StatusCode], ...] = (
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ReadTimeout, grpc.StatusCode.UNAVAILABLE),
    (CommitUnknown, grpc.StatusCode.UNAVAILABLE),
    (ProposalDropped, grpc.StatusCode.UNAVAILABLE),
    (NotLeader, grpc.StatusCode.UNAVAILABLE),
    (NoLeader, grpc.StatusCode.UNAVAILABLE),
    (Stopped, grpc.StatusCode.UNAVAILABLE),
)

_REFUSAL_CODES = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ABORTED: grpc.StatusCode.ABORTED,
}


class ServiceError(Exception):
    """An RPC fails with `code`; `message` names the field or says what to do next."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, problem: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def status_for(error: ReplicaError) -> grpc.StatusCode:
    for kind, code in _REPLICA_CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNAVAILABLE


def from_refusal(refusal: Refusal) -> ServiceError:
    return ServiceError(_REFUSAL_CODES[refusal.code], refusal.message)


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def rpc(method: Handler) -> Handler:
    """Turn ServiceError and ReplicaError raised by a servicer method into its gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)
        except ReplicaError as exc:
            await context.abort(status_for(exc), str(exc))

    return wrapper  # type: ignore[return-value]
