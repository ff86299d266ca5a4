"""The asyncio twin of transport.Transport: the same failover and retries, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import grpc

from . import cluster_ops
from .endpoints import Endpoints
from .errors import DsyncError, from_rpc_error
from .ops import Op, Out, Resp
from .retry import Attempts, RetryPolicy
from .session import SessionPool
from .transport import CHANNEL_OPTIONS, LEADER_QUERY_S, serialize


class AsyncTransport:
    def __init__(self, endpoints: Sequence[str], policy: RetryPolicy, sessions: SessionPool) -> None:
        self.endpoints = Endpoints(endpoints)
        self.policy = policy
        self.sessions = sessions
        # Created on first use, inside the event loop that will drive them.
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False

    async def run(self, op: Op[Resp, Out], timeout: float | None = None) -> Out:
        """Call with failover and retries; `timeout` overrides the policy's for this call.
        A write keeps one session of the pool, and so one header, until it ends."""
        if not op.write:
            return await self._retry(op, timeout)
        with self.sessions.header() as header:
            return await self._retry(op.stamped(header), timeout)

    async def _retry(self, op: Op[Resp, Out], timeout: float | None) -> Out:
        policy = self.policy if timeout is None else replace(self.policy, timeout=timeout)
        attempts = Attempts(policy, wait=op.wait, write=op.write)
        while True:
            if self.endpoints.needs_check():
                await self._find_leader(attempts)
            address = self.endpoints.current()
            try:
                return await self._attempt(address, op, attempts.attempt_timeout())
            except DsyncError as error:
                pause = attempts.pause_after(error)  # re-raises what a retry cannot fix
            self.endpoints.failed(address)
            await asyncio.sleep(pause)

    async def run_on(self, address: str, op: Op[Resp, Out]) -> Out:
        """One attempt on one node, no failover: for asking each node about itself."""
        return await self._attempt(address, op, min(self.policy.timeout, op.wait + self.policy.attempt_timeout))

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    async def _find_leader(self, attempts: Attempts) -> None:
        try:
            leader = await self._attempt(
                self.endpoints.current(), cluster_ops.leader(), min(LEADER_QUERY_S, attempts.remaining())
            )
        except DsyncError:
            return  # no leader known there: the call itself finds out whether the node is usable
        self.endpoints.leader_is(leader.address)

    async def _attempt(self, address: str, op: Op[Resp, Out], timeout: float) -> Out:
        call = self._channel(address).unary_unary(
            op.method.path, request_serializer=serialize, response_deserializer=op.method.response.FromString
        )
        try:
            response = await call(op.request, timeout=max(0.001, timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address, op.refine) from None
        return op.convert(response)

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._closed:
            raise RuntimeError("this dsync client is closed: create a new AsyncClient")
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return channel
