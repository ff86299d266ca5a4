"""Counting and timing every unary gRPC call, for the node's metrics.

The interceptor records into plain counters and histograms (`RequestStats`) that the
metrics exporter reads at scrape time: no metrics library on the call path, and each
node in a process keeps its own.  Streaming calls -- the Raft peer stream, reflection
-- live as long as a connection does, so a latency would mean nothing; they pass
through untouched.  The interceptor also reads each unary request itself, so that bytes
that are no valid message get INVALID_ARGUMENT, as any other bad input does.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.replica.stats import Histogram

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class RequestStats:
    """Requests by (name, outcome) and latency by name.

    Names and outcomes must come from bounded sets -- method names, route templates,
    status codes -- never from request contents, so the series stay few.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def observe(self, name: str, outcome: str, seconds: float) -> None:
        key = (name, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.latency.get(name)
        if histogram is None:
            histogram = self.latency[name] = Histogram()
        histogram.observe(seconds)


class StatsInterceptor(grpc.aio.ServerInterceptor):
    """Records each unary call's full method name, final status code name and duration."""

    def __init__(self, stats: RequestStats) -> None:
        self._stats = stats
        # The continuation hands out the same handler for a method every time, so its
        # timed twin is built once per method.
        self._timed: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        timed = self._timed.get(method)
        if timed is None:
            timed = self._timed[method] = grpc.unary_unary_rpc_method_handler(
                self._time(method, handler.unary_unary, handler.request_deserializer),  # type: ignore[arg-type]
                response_serializer=handler.response_serializer,
            )
        return timed

    def _time(self, method: str, behavior: UnaryBehavior, deserialize: Callable[[bytes], Any] | None) -> UnaryBehavior:
        """`behavior`, timed and counted, taking the request's bytes: grpc.aio answers bytes
        its deserializer cannot read with UNKNOWN and no count, so they are read here and
        answered INVALID_ARGUMENT like any other bad input."""
        stats = self._stats

        async def timed(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            began = time.perf_counter()
            outcome = "OK"
            try:
                try:
                    request = raw if deserialize is None else deserialize(raw)
                except Exception as exc:  # DecodeError, or nesting beyond protobuf's limit
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message: {exc}"
                    )
                return await behavior(request, context)
            except BaseException as exc:
                # An abort set the code; anything else reaches the client as UNKNOWN, or
                # as CANCELLED when the call was cancelled under the servicer.
                code = context.code()
                if isinstance(code, grpc.StatusCode):
                    outcome = code.name
                elif isinstance(exc, Exception):
                    outcome = grpc.StatusCode.UNKNOWN.name
                else:
                    outcome = grpc.StatusCode.CANCELLED.name
                raise
            finally:
                stats.observe(method, outcome, time.perf_counter() - began)

        return timed
