"""Nodes that stop answering without closing their connections (SIGSTOP), as after a VM
pause or a long stall: the others must neither wait for them nor be disturbed when they
come back, and a leader that comes back must not answer from its old view.

The leader's freeze lasts until the new leader's keepalive has given up on it, so when it
thaws nothing from the others is waiting in its sockets to tell it that it was deposed:
it has to find out for itself (check-quorum, a ReadIndex round) before it answers a
linearizable read."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.request import urlopen

import grpc
import pytest

from server.cluster import LocalCluster
from tests.integration.conftest import ELECTION_TIMEOUT_S, Kv, poll

pytestmark = pytest.mark.integration

# A write the remaining majority can commit must not take anywhere near this long; a
# transport that waited on the frozen peer would take until its keepalive gave up.
WRITE_BOUND_S = 3.0
# Peer keepalive: a ping every 10 s, given up on after 5 s more (server/transport/wire.py).
LINK_DOWN_WITHIN_S = 40.0


@asynccontextmanager
async def frozen(cluster: LocalCluster, name: str) -> AsyncIterator[None]:
    """`name` is stopped (SIGSTOP) inside the block and continued (SIGCONT) however it ends."""
    cluster.signal(name, signal.SIGSTOP)
    try:
        yield
    finally:
        cluster.signal(name, signal.SIGCONT)


State = dict[str, object]


def number(state: State, field: str) -> int:
    return int(str(state[field]))


async def wait_for_state(
    cluster: LocalCluster, name: str, holds: str, check: Callable[[State], bool], timeout: float
) -> State:
    """Poll `name`'s /raft/state until `check(state)` is true; fail saying `holds` otherwise."""
    state = await poll(
        lambda: asyncio.to_thread(cluster.state, name), lambda s: s is not None and check(s), f"{name} {holds}", timeout
    )
    assert state is not None
    return state


def link_up(cluster: LocalCluster, name: str, peer: str) -> bool:
    """Whether `name` reports its Raft stream to `peer` up (dsync_peer_connected)."""
    with urlopen(f"http://127.0.0.1:{cluster.node(name).metrics_port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    return f'dsync_peer_connected{{peer="{peer}"}} 1.0' in metrics


async def timed_put(kv: Kv, node: str, key: str, value: bytes) -> int:
    began = time.monotonic()
    version = await kv.put(node, key, value)
    took = time.monotonic() - began
    assert took < WRITE_BOUND_S, f"a write through {node} took {took:.1f} s"
    return version


async def test_a_frozen_follower_neither_slows_the_others_nor_disturbs_them_when_it_thaws(
    cluster: LocalCluster, kv: Kv
) -> None:
    leader = await cluster.wait_for_leader(timeout=10)
    follower, other = [n.name for n in cluster if n.name != leader]
    await kv.put(leader, "before", b"0")
    term = number(await wait_for_state(cluster, leader, "the leader", lambda s: s["role"] == "leader", 5), "term")

    async with frozen(cluster, follower):
        last = 0
        for i in range(40):
            last = await timed_put(kv, leader if i % 2 else other, f"frozen{i}", b"1")
        # The leader keeps its place: the other follower hears it, nobody starts an election.
        state = await wait_for_state(cluster, other, f"following {leader}", lambda s: s["leader"] == leader, 5)
        assert number(state, "term") == term

    caught_up = await wait_for_state(
        cluster, follower, f"caught up to {last}", lambda s: number(s, "applied_index") >= last, 20
    )
    assert caught_up["leader"] == leader
    assert await kv.get(follower, "frozen39", linearizable=False) == b"1"
    # The thawed follower's election timer ran out while it slept: pre-vote (and skipping
    # late ticks rather than bursting them) must keep it from deposing a working leader.
    # Either alone suffices, so this fails only if both break.
    after = await wait_for_state(cluster, leader, "still leading", lambda s: s["role"] == "leader", 5)
    assert number(after, "term") == term, f"the thaw of {follower} changed the term {term} -> {after['term']}"


async def test_a_frozen_leader_is_replaced_and_after_thawing_never_answers_from_its_old_view(
    cluster: LocalCluster, kv: Kv
) -> None:
    old = await cluster.wait_for_leader(timeout=10)
    names = [n.name for n in cluster]
    survivors = [name for name in names if name != old]
    for i in range(10):
        await kv.put(names[i % 3], f"before{i}", b"0")

    async with frozen(cluster, old):
        began = time.monotonic()
        state = await wait_for_state(
            cluster,
            survivors[0],
            "following a new leader",
            lambda s: s["leader"] in survivors,
            4 * ELECTION_TIMEOUT_S,
        )
        new = str(state["leader"])
        await wait_for_state(cluster, survivors[1], f"following {new}", lambda s: s["leader"] == new, 5)
        print(f"{new} took over {time.monotonic() - began:.2f} s after {old} froze")
        for i in range(10):
            await timed_put(kv, survivors[i % 2], f"during{i}", b"1")
        # Overwritten while the old leader sleeps: a stale answer would still say "0".
        await timed_put(kv, new, "before0", b"2")
        deadline = time.monotonic() + LINK_DOWN_WITHIN_S
        while await asyncio.to_thread(link_up, cluster, new, old):
            assert time.monotonic() < deadline, f"{new} still calls its link to the frozen {old} up"
            await asyncio.sleep(0.2)

    # At once, while it may still believe it leads: a linearizable read must either fail
    # (retry elsewhere) or see the new value, never the value from before the freeze.
    deadline = time.monotonic() + 20
    while True:
        try:
            value = await kv.get(old, "before0")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
            assert time.monotonic() < deadline, f"{old} still refuses reads 20 s after thawing: {exc.details()}"
            await asyncio.sleep(0.1)
            continue
        assert value == b"2", f"{old} answered {value!r} from before its freeze"
        break
    state = await wait_for_state(cluster, old, f"following {new}", lambda s: s["leader"] == new, 10)
    assert state["role"] == "follower"
    for i in range(10):
        assert await kv.get(old, f"during{i}") == b"1"
