"""The internal KvService: proves the runtime end to end until the public services land."""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from dsync.internal.v1 import kv_pb2, kv_pb2_grpc
from server.api.errors import status_for
from server.fsm.kv import KvError, encode_put
from server.replica.errors import ReplicaError

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20


class Proposer(Protocol):
    async def propose(self, command: bytes) -> object: ...

    async def read_barrier(self) -> int: ...


class KvReader(Protocol):
    def get(self, key: str) -> tuple[bytes, int] | None: ...


class KvServicer(kv_pb2_grpc.KvServiceServicer):
    def __init__(self, replica: Proposer, kv: KvReader) -> None:
        self._replica = replica
        self._kv = kv

    async def Put(
        self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext[kv_pb2.PutRequest, kv_pb2.PutResponse]
    ) -> kv_pb2.PutResponse:
        await _check_key(request.key, context)
        if len(request.value) > MAX_VALUE_BYTES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"value: {len(request.value)} bytes; at most {MAX_VALUE_BYTES}"
            )
        try:
            result = await self._replica.propose(encode_put(request.key, request.value))
        except ReplicaError as exc:
            await context.abort(status_for(exc), str(exc))
        if isinstance(result, KvError) or not isinstance(result, int):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"refused: {result}")
        return kv_pb2.PutResponse(version=result)

    async def Get(
        self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext[kv_pb2.GetRequest, kv_pb2.GetResponse]
    ) -> kv_pb2.GetResponse:
        await _check_key(request.key, context)
        if request.linearizable:
            try:
                await self._replica.read_barrier()
            except ReplicaError as exc:
                await context.abort(status_for(exc), str(exc))
        found = self._kv.get(request.key)
        if found is None:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(found=True, value=found[0], version=found[1])


async def _check_key(key: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if not key:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key: must not be empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"key: longer than {MAX_KEY_BYTES} bytes")
