"""A `with client.lock(...)` block never starts on a lease that may already have ended.

LeaseNode is a real gRPC server scripting one LockService: the first Acquire is granted
at once but its answer is lost (it fails as a dead leader's would, after the client gave
the attempt up); the retry is answered with that same grant, as a session answers a
retried write.  The lease counts from that first grant, and Refresh and Release refuse
once it has ended, as the cluster would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from dsync.v1 import cluster_pb2, cluster_pb2_grpc, lock_pb2, lock_pb2_grpc
from dsync_client import AsyncClient, Client, LockLost, RetryPolicy
from server.fsm import lock_views
from tests.client.scripted import UnscriptedCluster, UnscriptedLock

# The first attempt's answer is lost for at most this long; the client gives it up sooner.
LOST_ANSWER_S = 30.0


@dataclass
class LeaseNode(UnscriptedLock, UnscriptedCluster):
    ttl: float = 0.5
    address: str = ""
    granted_at: float = 0.0
    acquires: int = 0
    refreshes: list[float] = field(default_factory=list)
    release_attempt: threading.Event = field(default_factory=threading.Event)
    refresh_delay: float = 0.0  # how long each Refresh takes to answer
    refresh_unavailable: bool = False  # Refresh answers UNAVAILABLE, as without a leader

    def _grant(self, resource: str, owner: str) -> lock_pb2.AcquireResponse:
        return lock_pb2.AcquireResponse(
            resource=resource,
            owner=owner,
            mode=lock_pb2.LOCK_MODE_EXCLUSIVE,
            fencing_token=7,
            ttl_seconds=self.ttl,
            expires_in_seconds=self.ttl,
        )

    def _check_held(self, context: grpc.ServicerContext) -> None:
        if time.monotonic() >= self.granted_at + self.ttl:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the lease ended: w does not hold 'r'")

    def Acquire(self, request: lock_pb2.AcquireRequest, context: grpc.ServicerContext) -> lock_pb2.AcquireResponse:
        self.acquires += 1
        if self.acquires == 1:
            self.granted_at = time.monotonic()
            self.release_attempt.wait(LOST_ANSWER_S)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the leader stepped down before answering: retry")
        return self._grant(request.resource, request.owner)

    def Refresh(self, request: lock_pb2.RefreshRequest, context: grpc.ServicerContext) -> lock_pb2.RefreshResponse:
        if self.refresh_unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "knows no leader: retry")
        self._check_held(context)
        self.release_attempt.wait(self.refresh_delay)
        self.refreshes.append(time.monotonic())
        self.granted_at = time.monotonic()
        return lock_views.renewal(self._grant(request.resource, request.owner))

    def Release(self, request: lock_pb2.ReleaseRequest, context: grpc.ServicerContext) -> lock_pb2.ReleaseResponse:
        self._check_held(context)
        return lock_pb2.ReleaseResponse(fencing_token=7)


def _serve(node: LeaseNode, servers: list[tuple[grpc.Server, LeaseNode]]) -> LeaseNode:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    lock_pb2_grpc.add_LockServiceServicer_to_server(node, server)
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(node, server)
    node.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    servers.append((server, node))
    return node


@pytest.fixture
def serve() -> Iterator[list[tuple[grpc.Server, LeaseNode]]]:
    servers: list[tuple[grpc.Server, LeaseNode]] = []
    yield servers
    for server, node in servers:
        node.release_attempt.set()
        server.stop(None)


def _policy(attempt_timeout: float) -> RetryPolicy:
    return RetryPolicy(timeout=10, attempt_timeout=attempt_timeout, initial_backoff=0.02, max_backoff=0.05)


@pytest.mark.parametrize("wait", [0.0, 0.3])
def test_a_block_whose_grant_was_answered_after_its_lease_ended_does_not_run(
    serve: list[tuple[grpc.Server, LeaseNode]], wait: float
) -> None:
    node = _serve(LeaseNode(ttl=0.5), serve)
    ran: list[bool] = []
    # Each attempt may take wait + 0.7 s: longer than the lease, granted at the first one.
    with Client([node.address], retry=_policy(0.7)) as client:
        with pytest.raises(LockLost) as raised, client.lock("r", timeout=wait, ttl=0.5):
            ran.append(True)
    assert node.acquires == 2 and ran == [], "the block ran on a lease that had ended"
    assert "may have ended before the block could start" in raised.value.message


def test_a_grant_answered_late_is_confirmed_by_a_refresh_before_the_block(
    serve: list[tuple[grpc.Server, LeaseNode]],
) -> None:
    node = _serve(LeaseNode(ttl=3.0), serve)
    with Client([node.address], retry=_policy(1.2)) as client, client.lock("r", ttl=3.0) as held:
        # The answer came over a third of the lease after the grant: the lease the block
        # counts on is the one a refresh confirmed since.
        assert len(node.refreshes) == 1 and not held.lost.is_set()


async def test_an_async_block_whose_grant_was_answered_after_its_lease_ended_does_not_run(
    serve: list[tuple[grpc.Server, LeaseNode]],
) -> None:
    node = _serve(LeaseNode(ttl=0.5), serve)
    ran: list[bool] = []
    async with AsyncClient([node.address], retry=_policy(0.7)) as client:
        with pytest.raises(LockLost) as raised:
            async with client.lock("r", ttl=0.5):
                ran.append(True)
    assert node.acquires == 2 and ran == [], "the block ran on a lease that had ended"
    assert "may have ended before the block could start" in raised.value.message


@pytest.mark.parametrize("refresh", ["slow", "unavailable"])
def test_a_block_whose_late_grant_cannot_be_confirmed_within_a_third_of_its_ttl_does_not_run(
    serve: list[tuple[grpc.Server, LeaseNode]], refresh: str
) -> None:
    """Confirmed later than ttl/3, the lease could end before the block's first refresh."""
    node = _serve(LeaseNode(ttl=3.0, refresh_delay=1.5, refresh_unavailable=refresh == "unavailable"), serve)
    ran: list[bool] = []
    with Client([node.address], retry=_policy(1.2)) as client:
        with pytest.raises(LockLost) as raised, client.lock("r", ttl=3.0):
            ran.append(True)
    assert ran == [], "the block ran on a lease it could not confirm in time"
    assert "may have ended before the block could start" in raised.value.message


async def test_an_async_block_whose_late_grant_is_confirmed_too_late_does_not_run(
    serve: list[tuple[grpc.Server, LeaseNode]],
) -> None:
    node = _serve(LeaseNode(ttl=3.0, refresh_delay=1.5), serve)
    ran: list[bool] = []
    async with AsyncClient([node.address], retry=_policy(1.2)) as client:
        with pytest.raises(LockLost):
            async with client.lock("r", ttl=3.0):
                ran.append(True)
    assert ran == [], "the block ran on a lease it could not confirm in time"
