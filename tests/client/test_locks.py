"""`with client.lock(...)` and the lock calls on a real cluster."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from dsync_client import AsyncClient, Client, Deadlock, LockConflict, LockLost
from tests.client.conftest import RunningCluster
from tests.client.waiting import wait_until

pytestmark = pytest.mark.integration


def _name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


def test_a_block_keeps_its_lease_past_the_ttl_and_releases_on_exit(client: Client) -> None:
    resource = _name("lease")
    with client.lock(resource, ttl=0.9) as held:
        assert held.token > 0 and held.mode == "exclusive" and held.owner.startswith(client.client_id)
        time.sleep(1.5)  # longer than the lease: only the background refresh keeps it
        assert not held.lost.is_set()
        assert client.locks.validate(resource, held.owner, held.token)
    assert client.locks.get(resource).holders == ()


def test_an_exception_in_the_block_still_releases_the_lock(client: Client) -> None:
    resource = _name("raises")
    with pytest.raises(ZeroDivisionError), client.lock(resource, ttl=10):
        1 / 0
    assert client.locks.get(resource).mode == "free"


def test_a_busy_lock_conflicts_or_is_waited_for_and_tokens_grow(client: Client) -> None:
    resource = _name("busy")
    granted: list[tuple[int, bool]] = []
    with client.lock(resource, ttl=10) as first:
        with pytest.raises(LockConflict, match="retry later, or pass a timeout"), client.lock(resource, ttl=10):
            pass

        def wait_for_it() -> None:  # waits longer than its own ttl: the lease starts at the grant
            with client.lock(resource, timeout=10, ttl=0.6) as second:
                time.sleep(0.5)  # past the first refresh
                granted.append((second.token, second.lost.is_set()))

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        wait_until(lambda: client.locks.get(resource).waiters, 5, "the second block to queue")
        time.sleep(0.8)
    waiter.join(timeout=10)
    assert len(granted) == 1 and granted[0][0] > first.token
    assert not granted[0][1], "a lease granted after a long wait was taken for lost"


def test_waiting_that_would_close_a_cycle_is_a_deadlock(client: Client) -> None:
    r1, r2 = _name("r1"), _name("r2")
    client.locks.acquire(r1, "alice", ttl=10)
    client.locks.acquire(r2, "bob", ttl=10)
    bob_got: list[int] = []
    bob = threading.Thread(target=lambda: bob_got.append(client.locks.acquire(r1, "bob", timeout=5).token))
    bob.start()
    try:
        wait_until(lambda: client.locks.get(r1).waiters, 5, "bob to wait for r1")
        with pytest.raises(Deadlock, match="deadlock"):
            client.locks.acquire(r2, "alice", timeout=5)
        assert [w.owner for w in client.locks.get(r2).waiters] == [], "a refused request changes nothing"
    finally:
        client.locks.release(r1, "alice")  # bob's wait ends with r1
        bob.join(timeout=10)
        client.locks.release(r2, "bob")
        client.locks.release(r1, "bob")
    assert len(bob_got) == 1


def test_a_lost_lease_sets_lost_and_the_block_ends_with_lock_lost(client: Client) -> None:
    resource = _name("lost")
    with pytest.raises(LockLost, match="ended before the block did"), client.lock(resource, ttl=0.9) as held:
        client.locks.release(resource, held.owner)  # as if the lease had expired behind our back
        wait_until(held.lost.is_set, 3, "the refresher to notice")


async def test_async_with_holds_and_releases(shared_cluster: RunningCluster) -> None:
    resource = _name("async")
    async with AsyncClient(shared_cluster.endpoints) as client:
        async with client.lock(resource, mode="shared", ttl=0.9) as held:
            other = await client.locks.acquire(resource, "reader-2", mode="shared", ttl=5)
            assert other.token > held.token
            info = await client.locks.get(resource)
            assert info.mode == "shared" and [h.owner for h in info.holders] == [held.owner, "reader-2"]
            await asyncio.sleep(1.3)  # past the ttl: the refresh task keeps it
            assert not held.lost.is_set()
        await client.locks.release(resource, "reader-2")
        assert (await client.locks.get(resource)).mode == "free"
