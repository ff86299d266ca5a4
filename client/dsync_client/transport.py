"""Blocking calls with failover: the sync client's only way to reach the cluster.

A call goes to the current endpoint (the leader once known); when the answer is
"unavailable" or the attempt times out, it moves to the next endpoint, sleeps a jittered
backoff and tries again, until the call's deadline.  Requests are sent unchanged on every
attempt, so a write's header stays the same and the server applies it once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import grpc

from google.protobuf.message import Message

from . import cluster_ops
from .endpoints import Endpoints
from .errors import DsyncError, from_rpc_error
from .ops import Op, Out, Resp
from .retry import Attempts, RetryPolicy
from .session import SessionPool

# Reconnect quickly to a restarted node: gRPC's default backoff grows to two minutes,
# during which calls to that endpoint fail at once.  While a call is open, ping the node
# every 10 s and give it up after 5 s without an answer: a node that froze or vanished
# without closing the connection (power loss, partition) fails a long wait -- a lock
# queue, a long poll -- in seconds rather than at its deadline, and the call moves to
# another node.  The nodes accept pings this often (server/transport/wire.py).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # grpcio 1.85 waits for a ping's answer this long, whatever keepalive_timeout says.
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]
# How long asking a node who leads may take: it answers from its own view, at once.
LEADER_QUERY_S = 1.0


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Transport:
    def __init__(self, endpoints: Sequence[str], policy: RetryPolicy, sessions: SessionPool) -> None:
        self.endpoints = Endpoints(endpoints)
        self.policy = policy
        self.sessions = sessions
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._closed = False

    def run(self, op: Op[Resp, Out], timeout: float | None = None) -> Out:
        """Call with failover and retries; `timeout` overrides the policy's for this call.
        A write keeps one session of the pool, and so one header, until it ends."""
        if not op.write:
            return self._retry(op, timeout)
        with self.sessions.header() as header:
            return self._retry(op.stamped(header), timeout)

    def _retry(self, op: Op[Resp, Out], timeout: float | None) -> Out:
        policy = self.policy if timeout is None else replace(self.policy, timeout=timeout)
        attempts = Attempts(policy, wait=op.wait, write=op.write)
        while True:
            if self.endpoints.needs_check():
                self._find_leader(attempts)
            address = self.endpoints.current()
            try:
                return self._attempt(address, op, attempts.attempt_timeout())
            except DsyncError as error:
                pause = attempts.pause_after(error)  # re-raises what a retry cannot fix
            self.endpoints.failed(address)
            time.sleep(pause)

    def run_on(self, address: str, op: Op[Resp, Out]) -> Out:
        """One attempt on one node, no failover: for asking each node about itself."""
        return self._attempt(address, op, min(self.policy.timeout, op.wait + self.policy.attempt_timeout))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.close()

    def _find_leader(self, attempts: Attempts) -> None:
        try:
            timeout = min(LEADER_QUERY_S, attempts.remaining())
            leader = self._attempt(self.endpoints.current(), cluster_ops.leader(), timeout)
        except DsyncError:
            return  # no leader known there: the call itself finds out whether the node is usable
        self.endpoints.leader_is(leader.address)

    def _attempt(self, address: str, op: Op[Resp, Out], timeout: float) -> Out:
        call = self._channel(address).unary_unary(
            op.method.path, request_serializer=serialize, response_deserializer=op.method.response.FromString
        )
        try:
            response = call(op.request, timeout=max(0.001, timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address, op.refine) from None
        return op.convert(response)

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if self._closed:
                raise RuntimeError("this dsync client is closed: create a new Client")
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            return channel
