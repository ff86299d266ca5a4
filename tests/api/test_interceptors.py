"""The interceptor counts and times every unary call, and answers bytes that are no valid
request message with INVALID_ARGUMENT (grpc.aio alone would answer UNKNOWN, uncounted)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from dsync.v1 import lock_pb2
from server.api.interceptors import RequestStats, StatsInterceptor
from tests.replica.cluster import eventually

METHOD = "/dsync.v1.LockService/GetLock"


async def _get_lock(request: lock_pb2.GetLockRequest, context: object) -> lock_pb2.GetLockResponse:
    return lock_pb2.GetLockResponse(lock=lock_pb2.LockInfo(resource=request.resource))


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, RequestStats]]:
    stats = RequestStats()
    server = grpc.aio.server(interceptors=[StatsInterceptor(stats)])
    handler = grpc.unary_unary_rpc_method_handler(
        _get_lock,
        request_deserializer=lock_pb2.GetLockRequest.FromString,
        response_serializer=lock_pb2.GetLockResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("dsync.v1.LockService", {"GetLock": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, stats
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_valid_request_is_answered_and_counted(served: tuple[grpc.aio.Channel, RequestStats]) -> None:
    channel, stats = served
    call = channel.unary_unary(METHOD, lock_pb2.GetLockRequest.SerializeToString, lock_pb2.GetLockResponse.FromString)
    reply = await call(lock_pb2.GetLockRequest(resource="r"))
    assert reply.lock.resource == "r"
    await eventually(lambda: stats.counts == {(METHOD, "OK"): 1}, "the call counted")


@pytest.mark.parametrize("raw", [b"\x0a\x02\xc3\x28", b"\x0a\x05ab", b"\xff"], ids=["bad utf-8", "truncated", "bad tag"])
async def test_bytes_that_are_no_request_are_invalid_argument_and_counted(
    served: tuple[grpc.aio.Channel, RequestStats], raw: bytes
) -> None:
    channel, stats = served
    call = channel.unary_unary(METHOD)  # bytes in, bytes out
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(raw)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in str(error.value.details())
    # The status reaches the client while the server's handler is still unwinding.
    await eventually(lambda: stats.counts == {(METHOD, "INVALID_ARGUMENT"): 1}, "the refused call counted")
