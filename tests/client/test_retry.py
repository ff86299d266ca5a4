"""Failover and retries against real gRPC servers whose answers the test scripts.

Each ScriptedNode is a real in-process gRPC server speaking dsync.v1 (the Cache and
Cluster services), so the client's transport, channels and status handling are the real
ones; only what the node answers is chosen by the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from dsync.v1 import cache_pb2, cache_pb2_grpc, cluster_pb2, cluster_pb2_grpc, common_pb2
from dsync_client import AsyncClient, Client, RetryPolicy, Unavailable, VersionMismatch
from server.cluster import free_ports
from tests.client.scripted import UnscriptedCache, UnscriptedCluster

MAYBE_COMMITTED = "the leader did not confirm the proposal in time; it may still commit: retry with the same request id"


@dataclass
class ScriptedNode(UnscriptedCache, UnscriptedCluster):
    """Fails the first `failures` writes with `code`, then succeeds; names `leader` (or
    knows none).  Records every write's header, in arrival order."""

    failures: float = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    message: str = "node1 knows no leader (an election is under way): retry shortly"
    leader: str = ""
    headers: list[tuple[str, int]] = field(default_factory=list)
    address: str = ""

    def _write(self, header: common_pb2.RequestHeader, context: grpc.ServicerContext) -> None:
        self.headers.append((header.client_id, header.sequence))
        if len(self.headers) <= self.failures:
            context.abort(self.code, self.message)

    def Put(self, request: cache_pb2.PutRequest, context: grpc.ServicerContext) -> cache_pb2.PutResponse:
        self._write(request.header, context)
        return cache_pb2.PutResponse(version=len(self.headers))

    def CompareAndSet(
        self, request: cache_pb2.CompareAndSetRequest, context: grpc.ServicerContext
    ) -> cache_pb2.CompareAndSetResponse:
        self._write(request.header, context)
        return cache_pb2.CompareAndSetResponse(version=len(self.headers))

    def Leader(self, request: cluster_pb2.LeaderRequest, context: grpc.ServicerContext) -> cluster_pb2.LeaderResponse:
        if not self.leader:
            context.abort(grpc.StatusCode.UNAVAILABLE, "knows no leader")
        return cluster_pb2.LeaderResponse(leader_id="n", grpc_address=self.leader)


Serve = Callable[[ScriptedNode], ScriptedNode]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Starts a node on a free port; all are stopped after the test."""
    servers: list[grpc.Server] = []

    def start(node: ScriptedNode) -> ScriptedNode:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        cache_pb2_grpc.add_CacheServiceServicer_to_server(node, server)
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(node, server)
        node.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
        return node

    yield start
    for server in servers:
        server.stop(None)


def test_a_write_fails_over_to_the_next_node_with_the_same_header(serve: Serve) -> None:
    down, up = serve(ScriptedNode(failures=float("inf"))), serve(ScriptedNode())
    with Client([down.address, up.address]) as client:
        client.cache.put("k", 1)
        client.cache.put("k", 2)
    assert down.headers == [(client.client_id, 1)]
    assert up.headers == [(client.client_id, 1), (client.client_id, 2)]


def test_a_write_retried_on_one_node_keeps_its_header_across_attempts(serve: Serve) -> None:
    flaky = serve(ScriptedNode(failures=3, message=MAYBE_COMMITTED))
    with Client([flaky.address]) as client:
        assert client.cache.put("k", 1) == 4
    assert flaky.headers == [(client.client_id, 1)] * 4


def test_the_leader_a_node_names_is_called_first(serve: Serve) -> None:
    leader = serve(ScriptedNode())
    follower = serve(ScriptedNode(leader=leader.address))
    with Client([follower.address, leader.address]) as client:
        client.cache.put("k", 1)
    assert follower.headers == [] and len(leader.headers) == 1


def test_a_leader_address_that_is_not_an_endpoint_is_not_dialled(serve: Serve) -> None:
    node = serve(ScriptedNode(leader="10.255.255.1:1"))  # as advertised inside some other network
    with Client([node.address]) as client:
        client.cache.put("k", 1)
    assert len(node.headers) == 1


def test_an_endpoint_nobody_listens_on_is_skipped(serve: Serve) -> None:
    up = serve(ScriptedNode())
    with Client([f"127.0.0.1:{free_ports(1)[0]}", up.address], timeout=5) as client:
        client.cache.put("k", 1)
    assert len(up.headers) == 1


def test_the_client_gives_up_at_its_deadline_saying_why(serve: Serve) -> None:
    nodes = [serve(ScriptedNode(failures=float("inf"), message=MAYBE_COMMITTED)) for _ in range(2)]
    policy = RetryPolicy(timeout=0.8, initial_backoff=0.02, max_backoff=0.1)
    started = time.monotonic()
    with Client([n.address for n in nodes], retry=policy) as client, pytest.raises(Unavailable) as raised:
        client.cache.put("k", 1)
    elapsed = time.monotonic() - started
    assert 0.6 < elapsed < 2.0
    # The last failure is named: the server's answer, or (on a loaded machine) an attempt
    # that ran out of time; either way a write's outcome is unknown and says so.
    message = raised.value.message
    assert "gave up after" in message and ("it may still commit" in message or "DEADLINE" in message.upper())
    assert "the write may or may not have taken effect" in message
    attempts = nodes[0].headers + nodes[1].headers
    assert len(attempts) >= 4 and set(attempts) == {(client.client_id, 1)}
    assert nodes[0].headers and nodes[1].headers, "both endpoints were tried"


def test_a_refusal_is_raised_at_once_not_retried(serve: Serve) -> None:
    node = serve(
        ScriptedNode(
            failures=1,
            code=grpc.StatusCode.FAILED_PRECONDITION,
            message="key 'k' is at version 7, not 3: read it, then retry with expected_version 7",
        )
    )
    with Client([node.address]) as client, pytest.raises(VersionMismatch, match="retry with expected_version 7"):
        client.cache.compare_and_set("k", 1, expected_version=3)
    assert len(node.headers) == 1


async def test_the_async_client_fails_over_the_same_way(serve: Serve) -> None:
    down, up = serve(ScriptedNode(failures=float("inf"))), serve(ScriptedNode())
    async with AsyncClient([down.address, up.address]) as client:
        await client.cache.put("k", 1)
        await client.cache.put("k", 2)
    assert down.headers == [(client.client_id, 1)]
    assert up.headers == [(client.client_id, 1), (client.client_id, 2)]
