"""One contract suite, two backends: every `stores` test runs against memory and Redis."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from server.storage.embedded_redis import EmbeddedRedis
from server.storage.memory import MemoryRaftStorage
from server.storage.protocols import RaftStorage
from server.storage.redis_store import RedisRaftStorage

_clusters = itertools.count()


class Stores:
    """Opens handles on per-node storage; reopening a node sees what earlier handles saved."""

    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self.cluster = f"test{next(_clusters)}"  # unique prefix per test on the shared server
        self._memory: dict[str, MemoryRaftStorage] = {}
        self._opened: list[RaftStorage] = []

    def open(self, node: str = "n1", **kwargs: int) -> RaftStorage:
        store: RaftStorage
        if self.redis_url is None:
            store = self._memory.setdefault(node, MemoryRaftStorage())
        else:
            store = RedisRaftStorage.from_url(self.redis_url, cluster=self.cluster, node=node, **kwargs)
        self._opened.append(store)
        return store

    async def close(self) -> None:
        for store in self._opened:
            await store.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedRedis]:
    async with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """None for the in-memory twin; Redis is started only when a Redis test runs."""
    if request.param == "memory":
        return None
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    return server.url


@pytest_asyncio.fixture(loop_scope="session")
async def stores(backend_url: str | None) -> AsyncIterator[Stores]:
    s = Stores(backend_url)
    yield s
    await s.close()


@pytest_asyncio.fixture(loop_scope="session")
async def redis_stores(redis_server: EmbeddedRedis) -> AsyncIterator[Stores]:
    s = Stores(redis_server.url)
    yield s
    await s.close()


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir for a private server; short, so a unix socket path fits in it."""
    return tmp_path_factory.mktemp("r")
