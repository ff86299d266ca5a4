"""The HTTP gateway over the in-process service cluster (tests/api/harness.py).

Each node's servicers are captured as the harness registers them, and each node gets
the very aiohttp app a real node serves (`server.gateway.app.http_app`), reached
through aiohttp's TestClient on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dsync.v1 import cache_pb2, cache_pb2_grpc, cluster_pb2, cluster_pb2_grpc, lock_pb2, lock_pb2_grpc
from dsync.v1 import queue_pb2, queue_pb2_grpc
from server.api.cache_service import CacheServicer
from server.api.cluster_service import ClusterServicer
from server.api.context import ServiceContext
from server.api.interceptors import RequestStats
from server.api.lock_service import LockServicer
from server.api.queue_service import QueueServicer
from server.fsm.base import Component
from server.fsm.cache import CacheMachine
from server.fsm.lock import LockMachine
from server.fsm.queue import QueueMachine
from server.gateway.app import http_app
from server.gateway.status import Address, NodeStatus
from server.gateway.transcoder import Route, routes_for
from server.raft import NodeId
from tests.api.harness import Register, ServiceCluster, service_cluster

NODES = ("n1", "n2", "n3")
ADDRESSES = {nid: Address(f"{nid}.test:50051", f"http://{nid}.test:8001") for nid in NODES}
# Short enough that the no-quorum test answers quickly, long enough for a loaded machine.
PROPOSE_TIMEOUT = 2.0

Answer = tuple[int, Any]


def components() -> dict[str, Component]:
    return {"lock": LockMachine(), "queue": QueueMachine(), "cache": CacheMachine()}


@dataclass
class Gateways:
    """One TestClient per node, and the objects behind them."""

    cluster: ServiceCluster
    routes: dict[NodeId, list[Route]]
    servicers: dict[NodeId, dict[str, Any]]
    clients: dict[NodeId, TestClient[Any, Any]] = field(default_factory=dict)
    requests: dict[NodeId, RequestStats] = field(default_factory=dict)

    async def open(self, nid: NodeId) -> None:
        replica = self.cluster.raft.replica(nid)
        status = NodeStatus(replica, ADDRESSES, lambda: {}, lambda: {})
        self.requests[nid] = RequestStats()
        client: TestClient[Any, Any] = TestClient(TestServer(http_app(self.routes[nid], status, self.requests[nid])))
        await client.start_server()
        self.clients[nid] = client

    async def post(self, nid: NodeId, path: str, body: object = None, **headers: str) -> Answer:
        """POST `body` as JSON (raw when it is bytes); the status and the decoded answer."""
        data = body if isinstance(body, bytes) else None
        payload = None if isinstance(body, bytes) else body
        async with self.clients[nid].post(path, json=payload, data=data, headers=headers) as response:
            return response.status, await response.json()

    async def get(self, nid: NodeId, path: str, **params: str) -> Answer:
        async with self.clients[nid].get(path, params=params) as response:
            return response.status, await response.json()

    async def ok(self, nid: NodeId, path: str, body: object = None) -> Any:
        """The answer of a POST that must succeed."""
        status, answer = await self.post(nid, path, body)
        assert status == 200, (path, body, answer)
        return answer

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def _capture(
    routes: dict[NodeId, list[Route]], servicers: dict[NodeId, dict[str, Any]]
) -> list[Register]:
    """Registrations that also keep each node's servicers and their HTTP routes."""
    services: list[tuple[str, Any, Callable[[ServiceContext], Any], Callable[[Any, grpc.aio.Server], None]]] = [
        ("lock", lock_pb2, LockServicer, lock_pb2_grpc.add_LockServiceServicer_to_server),
        ("queue", queue_pb2, QueueServicer, queue_pb2_grpc.add_QueueServiceServicer_to_server),
        ("cache", cache_pb2, CacheServicer, cache_pb2_grpc.add_CacheServiceServicer_to_server),
        (
            "cluster",
            cluster_pb2,
            lambda ctx: ClusterServicer(ctx, {nid: a.grpc for nid, a in ADDRESSES.items()}),
            cluster_pb2_grpc.add_ClusterServiceServicer_to_server,
        ),
    ]

    def registration(name: str, module: Any, build: Callable[[ServiceContext], Any], add: Any) -> Register:
        (descriptor,) = module.DESCRIPTOR.services_by_name.values()

        def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
            servicer = build(ctx)
            add(servicer, server)
            nid = ctx.replica.id
            servicers.setdefault(nid, {})[name] = servicer
            routes.setdefault(nid, []).extend(routes_for(descriptor, servicer))
            return str(descriptor.full_name)

        return register

    return [registration(*service) for service in services]


@asynccontextmanager
async def gateways() -> AsyncIterator[Gateways]:
    routes: dict[NodeId, list[Route]] = {}
    servicers: dict[NodeId, dict[str, Any]] = {}
    register = _capture(routes, servicers)
    async with service_cluster(register, components, size=len(NODES), propose_timeout=PROPOSE_TIMEOUT) as cluster:
        found = Gateways(cluster, routes, servicers)
        try:
            for nid in NODES:
                await found.open(nid)
            yield found
        finally:
            await found.close()


@pytest.fixture
async def gw() -> AsyncIterator[Gateways]:
    async with gateways() as found:
        yield found
