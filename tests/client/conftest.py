"""A real 3-node cluster shared by the client's integration tests, driven from sync tests.

LocalCluster is asyncio-based; the tests here are mostly blocking (the sync client,
subprocesses), so the cluster gets its own event loop, run only while starting,
stopping or killing nodes.  One cluster serves the whole tests/client package: tests
use their own resource, topic and key names, so they do not see each other's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dsync_client import Client
from server.cluster import LocalCluster
from tests.integration.conftest import make_cluster

T = TypeVar("T")


@dataclass
class RunningCluster:
    cluster: LocalCluster
    loop: asyncio.AbstractEventLoop

    @property
    def endpoints(self) -> list[str]:
        return [node.grpc_address for node in self.cluster]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def leader(self, exclude: str | None = None) -> str:
        return self.run(self.cluster.wait_for_leader(timeout=30, exclude=exclude))


def start_cluster(data_dir: Path) -> RunningCluster:
    running = RunningCluster(make_cluster(data_dir), asyncio.new_event_loop())
    running.run(running.cluster.start())
    try:
        running.leader()
    except BaseException:
        stop_cluster(running)
        raise
    return running


def stop_cluster(running: RunningCluster) -> None:
    running.run(running.cluster.stop())
    running.loop.close()


@pytest.fixture(scope="package")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path_factory.mktemp("client-cluster"))
    yield running
    stop_cluster(running)


@pytest.fixture
def client(shared_cluster: RunningCluster) -> Iterator[Client]:
    with Client(shared_cluster.endpoints) as c:
        yield c
