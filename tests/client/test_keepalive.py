"""A client waiting on a node that stops answering moves to another node in seconds."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from dsync_client import Client
from dsync_client.lock_ops import Grant
from tests.client.conftest import start_cluster, stop_cluster
from tests.client.waiting import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 60.0  # far longer than keepalive needs: without it the waiter hangs this long


def test_a_lock_wait_on_a_frozen_node_is_granted_through_another(tmp_path: Path) -> None:
    running = start_cluster(tmp_path)
    frozen = ""
    try:
        leader = running.leader()
        by_name = {node.name: node.grpc_address for node in running.cluster}
        others = [address for name, address in by_name.items() if name != leader]
        resource = f"frozen-{uuid.uuid4().hex[:8]}"
        with Client(others) as holder, Client([by_name[leader], *others]) as waiter:
            holder.locks.acquire(resource, "holder", ttl=WAIT_S)
            got: list[Grant | BaseException] = []

            def wait_for_lock() -> None:
                try:
                    got.append(waiter.locks.acquire(resource, "waiter", timeout=WAIT_S, ttl=WAIT_S))
                except BaseException as exc:
                    got.append(exc)

            thread = threading.Thread(target=wait_for_lock, daemon=True)
            thread.start()
            wait_until(lambda: len(holder.locks.get(resource).waiters) == 1, 10, "the waiter queued")
            # The waiter's call sits on the leader, which now stops answering without
            # closing its connections, as after a power loss.
            running.cluster.signal(leader, signal.SIGSTOP)
            frozen = leader
            began = time.monotonic()
            holder.locks.release(resource, "holder")  # through the others, once they elect
            thread.join(WAIT_S / 2)
            took = time.monotonic() - began
            assert got, f"the waiter still hangs after {took:.0f} s on the frozen node"
            grant = got[0]
            assert isinstance(grant, Grant) and grant.owner == "waiter", grant
            print(f"granted through another node {took:.1f} s after the freeze")
    finally:
        if frozen:
            running.cluster.signal(frozen, signal.SIGCONT)
        stop_cluster(running)
