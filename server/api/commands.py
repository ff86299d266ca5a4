"""Proposing a service command and waiting for its result: the narrow interface every
servicer stands on (etcd's "propose and wait")."""

from __future__ import annotations

from typing import Protocol, TypeVar

import grpc

from google.protobuf.message import Message as ProtoMessage

from dsync.fsm.v1 import command_pb2
from dsync.v1 import common_pb2
from server.api.errors import ServiceError, from_refusal, invalid
from server.fsm.base import Refusal
from server.fsm.router import MAX_CLIENT_ID_BYTES

Response = TypeVar("Response", bound=ProtoMessage)


class Proposer(Protocol):
    async def propose(self, command: bytes) -> object: ...

    async def read_barrier(self) -> int: ...


def check_header(header: common_pb2.RequestHeader) -> None:
    if len(header.client_id.encode()) > MAX_CLIENT_ID_BYTES:
        raise invalid("header.client_id", f"longer than {MAX_CLIENT_ID_BYTES} bytes")
    if header.sequence and not header.client_id:
        raise invalid("header.client_id", "required when header.sequence is set")
    if header.client_id and not header.sequence:
        raise invalid(
            "header.sequence",
            "required (1 or more) when header.client_id is set: give each new write the next number",
        )


async def execute(
    replica: Proposer,
    service: str,
    command: ProtoMessage,
    header: common_pb2.RequestHeader,
    expect: type[Response],
) -> Response:
    """Replicate `command` for `service` ("lock", "queue" or "cache") and return its result.

    Raises ServiceError for a refusal, ReplicaError when the outcome is not known to be
    committed (see server.replica.errors).
    """
    check_header(header)
    envelope = command_pb2.Command(client_id=header.client_id, sequence=header.sequence)
    setattr(envelope, service, command.SerializeToString())
    result = await replica.propose(envelope.SerializeToString())
    if isinstance(result, Refusal):
        raise from_refusal(result)
    if not isinstance(result, expect):
        if header.client_id:
            # The session remembered the answer to the first call sent with this client id
            # and sequence, and that was a different call.
            raise invalid(
                "header.sequence",
                f"{header.sequence} was already used by client {header.client_id!r} for a different call; "
                "give each new write the next number",
            )
        raise ServiceError(
            grpc.StatusCode.INTERNAL,
            f"{service} returned {type(result).__name__}, expected {expect.__name__}",
        )
    return result
