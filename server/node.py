"""The composition root: the only place where concrete classes meet.

A node is one process: its Redis (private, or REDIS_URL), the Raft core rebuilt from
it, the replica driving that core, the gRPC server (peer stream, services, health,
reflection), the HTTP gateway (the same servicers, plus /health and /raft/state) and
/metrics.  Startup problems are reported as `StartupError`s that say what to change.

The gateway reads the other parts only through what this module hands it (see
server/gateway/views.py), so the gateway never reaches into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import secrets
import socket
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dsync.v1 import cache_pb2, cache_pb2_grpc, cluster_pb2, cluster_pb2_grpc, lock_pb2, lock_pb2_grpc
from dsync.v1 import queue_pb2, queue_pb2_grpc
from server.api.cache_service import CacheServicer, CacheStats
from server.api.clock import run_clock
from server.api.cluster_service import ClusterServicer
from server.api.context import ServiceContext
from server.api.events import EventHub
from server.api.interceptors import RequestStats, StatsInterceptor
from server.api.lock_service import LockServicer, LockStats
from server.api.queue_service import QueueServicer
from server.config import NodeConfig, redacted
from server.fsm.cache import CacheMachine
from server.fsm.lock import LockMachine
from server.fsm.queue import QueueMachine
from server.fsm.router import DsyncStateMachine
from server.gateway.app import http_app
from server.gateway.metrics import metrics_app, node_registry
from server.gateway.raft_metrics import RaftCollector
from server.gateway.request_metrics import RequestCollector
from server.gateway.service_metrics import ServiceCollector
from server.gateway.status import Address, NodeStatus
from server.gateway.transcoder import Route, routes_for
from server.raft import Config
from server.replica.boot import open_core
from server.replica.replica import Replica
from server.storage.embedded_redis import EmbeddedRedis, RedisStartError, unix_socket_fits
from server.storage.keys import NodeKeys
from server.storage.redis_store import RedisRaftStorage
from server.transport import wire
from server.transport.grpc_transport import GrpcTransport
from server.transport.peer_service import RaftPeerServicer, add_raft_service

logger = logging.getLogger("dsync.node")

_HEALTH_POLL_S = 0.1
_STOP_GRACE_S = 2.0
# How long a node whose save failed waits to see whether its private redis-server exited.
_REDIS_EXIT_GRACE_S = 1.0


class StartupError(RuntimeError):
    """The node cannot start; the message says what to change."""


class NodeFailed(RuntimeError):
    """The running node had to stop; the message says why and what to do next."""


def why_the_replica_stopped(fault: BaseException, where: str) -> str:
    """What a node says when its replica stopped on `fault`; `where` names its Redis."""
    if isinstance(fault, RedisAuthenticationError) or (
        isinstance(fault, RedisError) and not isinstance(fault, (RedisConnectionError, RedisTimeoutError))
    ):
        # Redis is up but refused the write: full (maxmemory), its disk failing (MISCONF),
        # a read-only replica, wrong credentials.  Restarting the node alone would not help.
        return (
            f"{where} refused a write: {fault}; fix that Redis (memory, disk, a replica "
            "that is read-only, credentials), then restart the node"
        )
    if isinstance(fault, (RedisError, OSError)):
        return f"lost {where} ({fault}); restart the node once it answers again"
    return f"its replica stopped on a fault ({fault!r}); see the log above"


def reserve_port(host: str, port: int, variable: str) -> socket.socket:
    """Bind `port` now, so a clear error comes before anything starts, and hold it so no
    process started meanwhile (our own redis-server picks a free port) can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{variable}={port}: the port is already in use on {host}; stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'`) or choose another {variable}"
            ) from exc
        raise StartupError(f"{variable}={port}: cannot bind {host}:{port}: {exc.strerror}") from exc
    return sock


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._redis_server: EmbeddedRedis | None = None
        self._storage: RedisRaftStorage | None = None
        self._transport: GrpcTransport | None = None
        self._grpc: grpc.aio.Server | None = None
        self._runners: list[web.AppRunner] = []
        self._health = health.aio.HealthServicer()
        self._background: list[asyncio.Task[None]] = []
        self._peer_service: RaftPeerServicer | None = None
        self.replica: Replica | None = None
        self.status: NodeStatus | None = None
        self.registry: CollectorRegistry | None = None  # this node's metrics, once started
        self.grpc_requests = RequestStats()
        self.http_requests = RequestStats()
        self.hub = EventHub()
        self.locks = LockMachine()
        self.queue = QueueMachine()
        self.cache = CacheMachine(config.cache_max_entries, config.cache_max_bytes, config.cache_policy)  # type: ignore[arg-type]
        self.machine = DsyncStateMachine({"lock": self.locks, "queue": self.queue, "cache": self.cache})
        self.machine.emit = self.hub.publish

    async def start(self) -> None:
        cfg = self.config
        reserved: list[socket.socket] = []
        try:
            for variable, port in (
                ("GRPC_PORT", cfg.grpc_port),
                ("HTTP_PORT", cfg.http_port),
                ("METRICS_PORT", cfg.metrics_port),
            ):
                reserved.append(reserve_port(cfg.bind_host, port, variable))
            await self._assemble(reserved)
        finally:
            for sock in reserved:
                sock.close()

    async def _assemble(self, reserved: list[socket.socket]) -> None:
        """Build and start everything; the reserved ports are released just before binding."""
        cfg = self.config
        client = await self._open_redis()
        self._storage = RedisRaftStorage(client, NodeKeys.for_node(cfg.cluster, cfg.node_id), owns_client=True)
        # A fresh incarnation per start lets the leader notice the restart (Config.incarnation).
        incarnation = secrets.randbits(64) or 1
        raft_config = Config(cfg.node_id, cfg.voters, election_ticks=cfg.election_ticks, incarnation=incarnation)
        core = await open_core(raft_config, self._storage, random.Random())
        self._transport = GrpcTransport(cfg.node_id, cfg.peers, cluster=cfg.cluster, token=cfg.cluster_token)
        self.replica = Replica(
            core,
            self._storage,
            self._transport,
            self.machine,
            tick_interval=cfg.tick_ms / 1000,
            snapshot_entries=cfg.snapshot_entries,
            snapshot_catchup_entries=cfg.snapshot_catchup_entries,
        )

        server = grpc.aio.server(options=wire.SERVER_OPTIONS, interceptors=[StatsInterceptor(self.grpc_requests)])
        self._peer_service = RaftPeerServicer(
            self.replica.inbox, cfg.node_id, cluster=cfg.cluster, members=cfg.voters, token=cfg.cluster_token
        )
        add_raft_service(server, self._peer_service)
        ctx = ServiceContext(self.replica, self.machine, self.hub)
        members = {m.name: m.address for m in cfg.members}
        routes: list[Route] = []
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        locks, caches = LockServicer(ctx), CacheServicer(ctx)
        services: list[tuple[Any, Any, Callable[[Any, grpc.aio.Server], None]]] = [
            (lock_pb2, locks, lock_pb2_grpc.add_LockServiceServicer_to_server),
            (queue_pb2, QueueServicer(ctx), queue_pb2_grpc.add_QueueServiceServicer_to_server),
            (cache_pb2, caches, cache_pb2_grpc.add_CacheServiceServicer_to_server),
            (
                cluster_pb2,
                ClusterServicer(ctx, members, self._peer_service.last_contact),
                cluster_pb2_grpc.add_ClusterServiceServicer_to_server,
            ),
        ]
        for module, servicer, register in services:
            register(servicer, server)
            (descriptor,) = module.DESCRIPTOR.services_by_name.values()
            names.append(descriptor.full_name)
            routes.extend(routes_for(descriptor, servicer))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(names, server)
        for sock in reserved:
            sock.close()
        server.add_insecure_port(f"{cfg.bind_host}:{cfg.grpc_port}")
        self._grpc = server
        self.status = NodeStatus(
            self.replica,
            {m.name: Address(m.address, m.http) for m in cfg.members},
            self._peer_service.last_contact,
            self._transport.peer_stats,
        )
        self.registry = self._metrics_registry(locks.stats, caches.stats)
        await self.replica.start()
        await server.start()
        await self._serve_http(http_app(routes, self.status, self.http_requests), cfg.http_port)
        await self._serve_http(metrics_app(self.registry), cfg.metrics_port)
        self._background = [
            asyncio.create_task(self._track_health(), name="health"),
            asyncio.create_task(run_clock(self.replica), name="clock"),
        ]
        logger.info(
            "node %s serving: gRPC %s:%d, HTTP %d, metrics %d, redis %s, peers %s",
            cfg.node_id,
            cfg.bind_host,
            cfg.grpc_port,
            cfg.http_port,
            cfg.metrics_port,
            redacted(cfg.redis_url) if cfg.redis_url else f"private ({cfg.data_dir / 'redis'})",
            "must send the CLUSTER_TOKEN" if cfg.cluster_token else "not authenticated (no CLUSTER_TOKEN)",
        )

    async def wait(self) -> None:
        """Until the replica stops.  Raises `NodeFailed`, saying why, if it failed or if the
        node's private redis-server exited under it."""
        assert self.replica is not None
        server = self._redis_server
        replica = asyncio.ensure_future(self.replica.join())
        redis_exit = asyncio.ensure_future(server.exited()) if server is not None else None
        fault: BaseException | None = None
        try:
            await asyncio.wait([t for t in (replica, redis_exit) if t is not None], return_when=asyncio.FIRST_COMPLETED)
            fault = replica.exception() if replica.done() else None
            if redis_exit is not None and fault is not None:
                # A save fails as the server dies; its exit shows a moment later.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(redis_exit), _REDIS_EXIT_GRACE_S)
        finally:
            for task in (replica, redis_exit):
                if task is not None:
                    task.cancel()
        if server is not None and redis_exit is not None and redis_exit.done() and not redis_exit.cancelled():
            raise NodeFailed(
                f"its private redis-server stopped under it: {redis_exit.result()}\n"
                f"Restart the node: what it acknowledged is in {server.data_dir}"
            ) from fault
        if fault is not None:
            where = f"its Redis at {redacted(self.config.redis_url)}" if self.config.redis_url else "its private redis-server"
            raise NodeFailed(why_the_replica_stopped(fault, where)) from fault

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._grpc is not None:
            await self._grpc.stop(_STOP_GRACE_S)
        for runner in self._runners:
            await runner.cleanup()
        if self.replica is not None:
            await self.replica.stop()
        if self._transport is not None:
            await self._transport.close()
        if self._storage is not None:
            await self._storage.close()
        if self._redis_server is not None:
            await self._redis_server.stop()

    def _metrics_registry(self, lock_waits: LockStats, cache_reads: CacheStats) -> CollectorRegistry:
        """This node's own registry: collectors reading its parts when Prometheus scrapes."""
        assert self.replica is not None and self._transport is not None and self._peer_service is not None
        peers = self._peer_service
        return node_registry(
            [
                RaftCollector(self.replica, self._transport.peer_stats, peers.stats, peers.last_contact),
                ServiceCollector(self.locks, lock_waits, self.queue, self.cache, cache_reads),
                RequestCollector(self.grpc_requests, self.http_requests),
            ]
        )

    async def _track_health(self) -> None:
        """gRPC health: SERVING while a leader is known, so orchestrators can probe readiness."""
        assert self.status is not None
        last: int | None = None
        while True:
            serving, _ = self.status.health()
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                await self._health.set("", status)
                last = status
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _serve_http(self, app: web.Application, port: int) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self.config.bind_host, port).start()

    async def _open_redis(self) -> Redis:
        cfg = self.config
        url = cfg.redis_url
        if url is None:
            # On a unix socket when its path fits: every save is a round trip to this server,
            # and one over a unix socket costs less CPU and time than one over loopback TCP.
            redis_dir = cfg.data_dir / "redis"
            self._redis_server = EmbeddedRedis(
                redis_dir,
                appendfsync=cfg.appendfsync,  # type: ignore[arg-type]
                unix_socket=unix_socket_fits(redis_dir),
            )
            try:
                await self._redis_server.start()
            except (RedisStartError, OSError) as exc:
                raise StartupError(f"could not start the private redis-server: {exc}") from exc
            url = self._redis_server.url
        client: Redis = Redis.from_url(url, decode_responses=False)
        try:
            await asyncio.wait_for(client.ping(), 5.0)
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise StartupError(
                f"Redis at {redacted(url)} is unreachable ({exc}); start it, fix REDIS_URL, "
                "or unset REDIS_URL to let the node run its own"
            ) from exc
        return client


async def serve(config: NodeConfig, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set or its replica fails."""
    node = Node(config)
    try:
        await node.start()
        waiter = asyncio.create_task(node.wait())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if waiter in done and not stop.is_set():
            waiter.result()  # re-raise NodeFailed
        else:
            # A stop was asked for: whatever failed as it came is part of stopping.
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, NodeFailed):
                await waiter
    finally:
        await node.stop()
