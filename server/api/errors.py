"""The one map from the replica's errors to gRPC status codes.

UNAVAILABLE means "try again, perhaps on another node": the message says whether the
write may already have happened, so a client knows if a retry needs its request id.
"""

from __future__ import annotations

import grpc

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

_CODES: tuple[tuple[type[ReplicaError], grpc.StatusCode], ...] = (
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ReadTimeout, grpc.StatusCode.UNAVAILABLE),
    (CommitUnknown, grpc.StatusCode.UNAVAILABLE),
    (ProposalDropped, grpc.StatusCode.UNAVAILABLE),
    (NotLeader, grpc.StatusCode.UNAVAILABLE),
    (NoLeader, grpc.StatusCode.UNAVAILABLE),
    (Stopped, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: ReplicaError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNAVAILABLE
