"""The deployment guide's demo (§4.3, §5), over HTTP, against a real 3-node cluster.

Every call is the README's curl command: the same node, path and body, and every answer
and status code is checked, down to the failover: kill the leader, publish through
another node, see the new leader in /raft/state, restart the old one and watch it rejoin.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.cluster import LocalCluster
from tests.integration.conftest import poll

pytestmark = pytest.mark.integration

GUIDE_ID = "dad11f12fd336e4d87ebd58c6aaa2579"  # the guide's deterministic message id
DEADLINE_S = 20.0  # for conditions that normally hold within a second or two


class Demo:
    def __init__(self, cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.http = http

    def url(self, node: str, path: str) -> str:
        return f"{self.cluster.node(node).http_url}{path}"

    async def post(self, node: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(self.url(node, path), json=body) as response:
            return response.status, await response.json()

    async def get(self, node: str, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url(node, path)) as response:
            return response.status, await response.json()

    async def ok(self, node: str, path: str, body: dict[str, Any]) -> Any:
        status, answer = await self.post(node, path, body)
        assert status == 200, (node, path, body, answer)
        return answer

    async def state(self, node: str) -> dict[str, Any] | None:
        try:
            status, answer = await self.get(node, "/raft/state")
        except aiohttp.ClientError:
            return None
        return answer if status == 200 else None


@pytest.fixture
async def demo(cluster: LocalCluster) -> AsyncIterator[Demo]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        yield Demo(cluster, http)


async def test_the_guides_demo_flow_over_http(demo: Demo) -> None:
    names = [node.name for node in demo.cluster]

    # §4.3: health and Raft state on every node; all name the same leader and its addresses.
    leader = await demo.cluster.wait_for_leader(timeout=DEADLINE_S)
    for name in names:
        status, health = await demo.get(name, "/health")
        reason = "leader" if name == leader else f"following {leader}"
        assert (status, health) == (200, {"status": "ok", "reason": reason})
        state = await demo.state(name)
        assert state is not None and state["node_id"] == name and state["leader"] == leader
        assert state["leader_grpc"] == demo.cluster.node(leader).grpc_address
        assert state["leader_http"] == demo.cluster.node(leader).http_url
        assert [m["id"] for m in state["members"]] == names

    # Lock: exclusive, then a second exclusive with timeout 2 is refused after about 2 s.
    alice = await demo.ok("node1", "/lock/acquire", {"resource": "r1", "owner": "alice", "mode": "exclusive"})
    assert (alice["resource"], alice["owner"], alice["mode"], alice["ttl_seconds"]) == (
        "r1",
        "alice",
        "LOCK_MODE_EXCLUSIVE",
        30.0,
    )
    began = time.monotonic()
    status, refused = await demo.post(
        "node2", "/lock/acquire", {"resource": "r1", "owner": "bob", "mode": "exclusive", "timeout": 2}
    )
    waited = time.monotonic() - began
    assert status == 409 and refused["status"] == "ABORTED" and refused["code"] == 10
    assert "held exclusively by alice" in refused["message"]
    assert waited >= 1.9 and waited < 6, f"answered after {waited:.2f} s"
    released = await demo.ok("node1", "/lock/release", {"resource": "r1", "owner": "alice"})
    assert released == {"resource": "r1", "owner": "alice", "fencing_token": alice["fencing_token"]}
    # Two shared holders, on two nodes, both granted.
    u1 = await demo.ok("node1", "/lock/acquire", {"resource": "r2", "owner": "u1", "mode": "shared"})
    u2 = await demo.ok("node2", "/lock/acquire", {"resource": "r2", "owner": "u2", "mode": "shared"})
    assert u1["mode"] == u2["mode"] == "LOCK_MODE_SHARED"
    assert int(u2["fencing_token"]) > int(u1["fencing_token"]) > int(alice["fencing_token"])

    # Cache: put -> get on another node -> invalidate on a third -> get misses.
    put = await demo.ok("node1", "/cache/put", {"key": "k", "value": {"x": 1}})
    got = await demo.ok("node2", "/cache/get", {"key": "k"})
    assert (got["found"], got["value"], got["version"]) == (True, {"x": 1.0}, put["version"])
    invalidated = await demo.ok("node3", "/cache/invalidate", {"key": "k"})
    assert (invalidated["existed"], invalidated["version"]) == (True, put["version"])
    miss = await demo.ok("node2", "/cache/get", {"key": "k"})
    assert (miss["found"], "value" in miss) == (False, False)
    assert int(miss["read_index"]) >= int(invalidated["index"])

    # Queue: publish with the guide's id -> consume -> ack (a second ack finds nothing).
    published = await demo.ok("node1", "/queue/publish", {"topic": "t", "data": {"x": 1}, "id": GUIDE_ID})
    assert published == {"id": GUIDE_ID, "duplicate": False}
    consumed = await demo.ok("node2", "/queue/consume", {"topic": "t", "consumer": "c1"})
    (delivery,) = consumed["messages"]
    assert (delivery["id"], delivery["data"], delivery["delivery_count"]) == (GUIDE_ID, {"x": 1.0}, 1)
    assert await demo.ok("node2", "/queue/ack", {"topic": "t", "id": GUIDE_ID}) == {}
    status, gone = await demo.post("node2", "/queue/ack", {"topic": "t", "id": GUIDE_ID})
    assert status == 404 and gone["status"] == "NOT_FOUND"

    # Failover: kill -9 the leader, publish through a survivor (retrying with the same
    # request header while the election runs), and see the new leader in /raft/state.
    await demo.cluster.kill(leader)
    survivor = next(name for name in names if name != leader)
    body = {"topic": "after", "data": "x", "header": {"client_id": "demo", "sequence": 1}}

    async def publish() -> Any:
        status, answer = await demo.post(survivor, "/queue/publish", body)
        assert status in (200, 503), answer  # 503: no leader yet, retry
        return answer if status == 200 else None

    after = await poll(publish, bool, "a publish through a survivor", DEADLINE_S)
    assert after["duplicate"] is False

    async def new_leader() -> str | None:
        states = [await demo.state(name) for name in names if name != leader]
        leaders = {s["leader"] for s in states if s is not None}
        found = leaders.pop() if len(leaders) == 1 and None not in states else ""
        return found if found and found != leader else None

    elected = await poll(new_leader, bool, "a new leader in /raft/state", DEADLINE_S)
    assert elected is not None
    state = await demo.state(survivor)
    assert state is not None and state["leader_http"] == demo.cluster.node(elected).http_url
    caught_up = state["commit_index"]  # covers the publish
    for name in names:
        if name != leader:
            assert (await demo.get(name, "/health"))[0] == 200

    # The old leader restarts on its data dir, rejoins as a follower and catches up.
    await demo.cluster.start(leader)

    async def rejoined() -> dict[str, Any] | None:
        state = await demo.state(leader)
        ok = state is not None and state["role"] == "follower" and state["leader"] == elected
        return state if ok and state is not None and state["applied_index"] >= caught_up else None

    await poll(rejoined, bool, f"{leader} following {elected} again, caught up", DEADLINE_S)
    status, health = await demo.get(leader, "/health")
    assert (status, health) == (200, {"status": "ok", "reason": f"following {elected}"})
    taken = await demo.ok(leader, "/queue/consume", {"topic": "after", "consumer": "c2", "max_messages": 10})
    assert [(m["id"], m["data"]) for m in taken["messages"]] == [(after["id"], "x")]  # once, despite retries
