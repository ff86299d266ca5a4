"""The public CacheService: writes through the log, reads from this node's replica.

Reads never enter the log.  A LINEARIZABLE Get first waits for a ReadIndex (the leader
confirms its leadership with a quorum and names the commit index, and this node applies
up to it), so it reflects every write acknowledged before it began, on any node.  A
LOCAL Get reads at once and says which log index it reflects.  The keys reads find are
reported through the log in batches (see `touches`), so they count for eviction on
every replica alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from dsync.fsm.v1 import cache_pb2 as fsm_pb2
from dsync.v1 import cache_pb2, cache_pb2_grpc, common_pb2
from server.api.cache_input import check_key, encode_value, ttl_ms
from server.api.commands import execute
from server.api.context import ServiceContext
from server.api.errors import invalid, rpc
from server.api.touches import TouchBatcher
from server.fsm.cache import CacheMachine

Context = grpc.aio.ServicerContext[object, object]


@dataclass
class CacheStats:
    """This node's reads (node-local, not replicated: each node counts its own)."""

    hits: int = 0
    misses: int = 0


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """Serves the node's "cache" component; `stats` counts this node's hits and misses."""

    def __init__(self, ctx: ServiceContext) -> None:
        cache = ctx.machine.components.get("cache")
        if not isinstance(cache, CacheMachine):
            raise ValueError("the cache service needs a CacheMachine as the state machine's 'cache' component")
        self._replica = ctx.replica
        self._cache = cache
        self._touches = TouchBatcher(ctx.replica)
        self.stats = CacheStats()

    @rpc
    async def Put(self, request: cache_pb2.PutRequest, context: Context) -> cache_pb2.PutResponse:
        check_key(request.key)
        put = fsm_pb2.CacheCommand.Put(
            key=request.key,
            value=encode_value(request.value, request.HasField("value")),
            ttl_ms=ttl_ms(request.ttl),
        )
        command = fsm_pb2.CacheCommand(put=put)
        return await execute(self._replica, "cache", command, request.header, cache_pb2.PutResponse)

    @rpc
    async def Get(self, request: cache_pb2.GetRequest, context: Context) -> cache_pb2.GetResponse:
        check_key(request.key)
        if request.consistency in (common_pb2.CONSISTENCY_UNSPECIFIED, common_pb2.CONSISTENCY_LINEARIZABLE):
            await self._replica.read_barrier()
        elif request.consistency != common_pb2.CONSISTENCY_LOCAL:
            raise invalid(
                "consistency", f"unknown value {request.consistency}: use CONSISTENCY_LINEARIZABLE or CONSISTENCY_LOCAL"
            )
        # No await from here on: the replica applies nothing between these two lines, so
        # applied_index is exactly what the answer reflects (at least the read index).
        hit = self._cache.get(request.key)
        read_index = self._replica.applied_index
        if hit is None:
            self.stats.misses += 1
            return cache_pb2.GetResponse(found=False, read_index=read_index)
        self.stats.hits += 1
        self._touches.record(request.key)
        response = cache_pb2.GetResponse(found=True, version=hit.version, read_index=read_index)
        response.value.MergeFromString(hit.value)
        return response

    @rpc
    async def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: Context
    ) -> cache_pb2.InvalidateResponse:
        check_key(request.key)
        command = fsm_pb2.CacheCommand(invalidate=fsm_pb2.CacheCommand.Invalidate(key=request.key))
        return await execute(self._replica, "cache", command, request.header, cache_pb2.InvalidateResponse)

    @rpc
    async def CompareAndSet(
        self, request: cache_pb2.CompareAndSetRequest, context: Context
    ) -> cache_pb2.CompareAndSetResponse:
        check_key(request.key)
        cas = fsm_pb2.CacheCommand.CompareAndSet(
            key=request.key,
            expected_version=request.expected_version,
            value=encode_value(request.value, request.HasField("value")),
            ttl_ms=ttl_ms(request.ttl),
        )
        command = fsm_pb2.CacheCommand(compare_and_set=cas)
        return await execute(self._replica, "cache", command, request.header, cache_pb2.CompareAndSetResponse)


def add_cache_service(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    """Serve the CacheService on `server`; returns its full name (for reflection and health)."""
    cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(ctx), server)
    return cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name
