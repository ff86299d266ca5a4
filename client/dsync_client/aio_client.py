"""The asyncio client: the same calls as client.Client, awaited.

    async with AsyncClient("127.0.0.1:50051,127.0.0.1:50052") as client:
        async with client.lock("r1", timeout=2, ttl=10) as held:
            ...
        await client.cache.put("k", {"v": 1})

Channels are opened on first use, in the event loop that runs the calls: use one
AsyncClient per event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType

from . import cache_ops, cluster_ops, lock_ops
from .aio_locks import AsyncLockContext
from .aio_queues import AsyncQueue
from .aio_transport import AsyncTransport
from .cache_ops import Entry, Invalidated
from .cluster_ops import Leader, Member, NodeStatus
from .endpoints import parse_endpoints
from .lock_ops import Grant, LockInfo, Mode
from .ops import ConsistencyName
from .retry import RetryPolicy
from .session import SessionPool
from .values import JSON


class AsyncClient:
    """A connection to a dsync cluster for asyncio code; arguments as for Client."""

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        client_id: str | None = None,
    ) -> None:
        policy = retry or RetryPolicy()
        if timeout is not None:
            policy = replace(policy, timeout=timeout)
        self._transport = AsyncTransport(parse_endpoints(endpoints), policy, SessionPool(client_id))
        self.locks = AsyncLocks(self._transport)
        self.cache = AsyncCache(self._transport)
        self.cluster = AsyncCluster(self._transport)

    @property
    def client_id(self) -> str:
        return self._transport.sessions.client_id

    def lock(
        self,
        resource: str,
        *,
        mode: Mode = "exclusive",
        timeout: float = 0.0,
        ttl: float = 30.0,
        owner: str | None = None,
    ) -> AsyncLockContext:
        """An async context manager holding `resource` for its block (see Client.lock)."""
        return AsyncLockContext(self._transport, resource, owner, mode, timeout, ttl)

    def queue(self, topic: str) -> AsyncQueue:
        return AsyncQueue(self._transport, topic)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncLocks:
    """The lock calls themselves (see client.Locks)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def acquire(
        self, resource: str, owner: str, *, mode: Mode = "exclusive", timeout: float = 0.0, ttl: float = 0.0
    ) -> Grant:
        return await self._t.run(lock_ops.acquire(resource, owner, mode, timeout, ttl))

    async def release(self, resource: str, owner: str) -> int:
        return await self._t.run(lock_ops.release(resource, owner))

    async def refresh(self, resource: str, owner: str, *, ttl: float = 0.0) -> Grant:
        return await self._t.run(lock_ops.refresh(resource, owner, ttl))

    async def validate(
        self, resource: str, owner: str, token: int, *, consistency: ConsistencyName = "linearizable"
    ) -> bool:
        return await self._t.run(lock_ops.validate(resource, owner, token, consistency))

    async def get(self, resource: str, *, consistency: ConsistencyName = "linearizable") -> LockInfo:
        return await self._t.run(lock_ops.get(resource, consistency))

    async def list(self, prefix: str = "", *, consistency: ConsistencyName = "linearizable") -> list[LockInfo]:
        locks: list[LockInfo] = []
        token = ""
        while True:
            page, token = await self._t.run(lock_ops.page(prefix, token, consistency))
            locks += page
            if not token:
                return locks


class AsyncCache:
    """The replicated cache of JSON values (see client.Cache)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def get(self, key: str, *, consistency: ConsistencyName = "linearizable") -> Entry | None:
        return await self._t.run(cache_ops.get(key, consistency))

    async def put(self, key: str, value: JSON, *, ttl: float = 0.0) -> int:
        return await self._t.run(cache_ops.put(key, value, ttl))

    async def invalidate(self, key: str) -> Invalidated:
        return await self._t.run(cache_ops.invalidate(key))

    async def compare_and_set(self, key: str, value: JSON, *, expected_version: int, ttl: float = 0.0) -> int:
        op = cache_ops.compare_and_set(key, expected_version, value, ttl)
        return await self._t.run(op)


class AsyncCluster:
    """What the nodes say about the cluster (see client.Cluster)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    @property
    def endpoints(self) -> list[str]:
        return self._t.endpoints.addresses

    async def status(self, endpoint: str | None = None) -> NodeStatus:
        op = cluster_ops.status()
        return await (self._t.run(op) if endpoint is None else self._t.run_on(endpoint, op))

    async def members(self) -> list[Member]:
        return await self._t.run(cluster_ops.members())

    async def leader(self) -> Leader:
        return await self._t.run(cluster_ops.leader())
