"""Every route of every service through the node's aiohttp app, answers checked in full.

The servicers have their own tests (tests/api); these prove the HTTP side: the routes
exist with the annotated verbs, guide-style bodies transcode into the requests, and
answers come back in protobuf's JSON mapping (field names as in the .proto, 64-bit
integers as strings, every field present).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from server.fsm.lock import LockMachine
from server.fsm.queue import ready_key
from server.gateway.transcoder import TIMEOUT_HEADER
from tests.gateway.conftest import ADDRESSES, NODES, Gateways
from tests.replica.cluster import eventually

SERVICE_ROUTES = {
    ("POST", "/lock/acquire"),
    ("POST", "/lock/release"),
    ("POST", "/lock/refresh"),
    ("POST", "/lock/validate"),
    ("POST", "/lock/get"),
    ("POST", "/lock/list"),
    ("POST", "/queue/publish"),
    ("POST", "/queue/publish_batch"),
    ("POST", "/queue/consume"),
    ("POST", "/queue/ack"),
    ("POST", "/queue/nack"),
    ("POST", "/queue/extend_visibility"),
    ("POST", "/queue/stats"),
    ("POST", "/cache/put"),
    ("POST", "/cache/get"),
    ("POST", "/cache/invalidate"),
    ("POST", "/cache/compare_and_set"),
    ("GET", "/cluster/status"),
    ("GET", "/cluster/members"),
    ("GET", "/cluster/leader"),
}


async def test_the_app_serves_exactly_the_annotated_routes_each_tested_here(gw: Gateways) -> None:
    for nid in NODES:
        assert {(r.verb, r.path) for r in gw.routes[nid]} == SERVICE_ROUTES
        served = {
            (route.method, route.resource.canonical)
            for route in gw.clients[nid].app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
        assert served == SERVICE_ROUTES | {("GET", "/health"), ("GET", "/raft/state")}


async def test_lock_routes(gw: Gateways) -> None:
    alice = await gw.ok("n1", "/lock/acquire", {"resource": "r1", "owner": "alice", "mode": "exclusive", "ttl": 60})
    token = alice["fencing_token"]
    assert alice == {
        "resource": "r1",
        "owner": "alice",
        "mode": "LOCK_MODE_EXCLUSIVE",
        "fencing_token": token,
        "ttl_seconds": 60.0,
        "expires_in_seconds": 60.0,
    }
    assert isinstance(token, str) and int(token) > 0  # uint64: a string in protobuf's JSON mapping
    refreshed = await gw.ok("n2", "/lock/refresh", {"resource": "r1", "owner": "alice", "ttl": 90})
    assert (refreshed["fencing_token"], refreshed["ttl_seconds"]) == (token, 90.0)
    assert refreshed["mode"] == "LOCK_MODE_EXCLUSIVE"
    valid = await gw.ok("n3", "/lock/validate", {"resource": "r1", "owner": "alice", "fencing_token": token})
    assert valid["valid"] is True and valid["mode"] == "LOCK_MODE_EXCLUSIVE" and 0 < valid["expires_in_seconds"] <= 90
    stale = await gw.ok("n3", "/lock/validate", {"resource": "r1", "owner": "alice", "fencing_token": "999"})
    assert stale == {"valid": False, "mode": "LOCK_MODE_UNSPECIFIED", "expires_in_seconds": 0.0}
    got = await gw.ok("n2", "/lock/get", {"resource": "r1", "consistency": "local"})
    (holder,) = got["lock"]["holders"]
    assert (got["lock"]["resource"], got["lock"]["mode"], got["lock"]["waiters"]) == ("r1", "LOCK_MODE_EXCLUSIVE", [])
    assert (holder["owner"], holder["fencing_token"], holder["ttl_seconds"]) == ("alice", token, 90.0)
    await gw.ok("n1", "/lock/acquire", {"resource": "r2", "owner": "u1", "mode": "shared"})
    listed = await gw.ok("n3", "/lock/list", {"prefix": "r", "page_size": 1})
    assert [lock["resource"] for lock in listed["locks"]] == ["r1"] and listed["next_page_token"] == "r1"
    rest = await gw.ok("n3", "/lock/list", {"prefix": "r", "page_token": "r1"})
    assert [lock["resource"] for lock in rest["locks"]] == ["r2"] and rest["next_page_token"] == ""
    released = await gw.ok("n2", "/lock/release", {"resource": "r1", "owner": "alice"})
    assert released == {"resource": "r1", "owner": "alice", "fencing_token": token}


async def test_the_guides_lock_flow_blocks_then_conflicts_and_shared_holders_coexist(gw: Gateways) -> None:
    await gw.ok("n1", "/lock/acquire", {"resource": "r1", "owner": "alice", "mode": "exclusive"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    bob = {"resource": "r1", "owner": "bob", "mode": "exclusive", "timeout": 1}
    status, error = await gw.post("n2", "/lock/acquire", bob)
    took = loop.time() - began
    assert status == 409 and error["status"] == "ABORTED" and "held exclusively by alice" in error["message"]
    assert 0.9 <= took < 5, took
    await gw.ok("n1", "/lock/release", {"resource": "r1", "owner": "alice"})
    u1 = await gw.ok("n1", "/lock/acquire", {"resource": "r2", "owner": "u1", "mode": "shared"})
    u2 = await gw.ok("n2", "/lock/acquire", {"resource": "r2", "owner": "u2", "mode": "shared"})
    assert u1["mode"] == u2["mode"] == "LOCK_MODE_SHARED" and int(u2["fencing_token"]) > int(u1["fencing_token"])


async def test_a_blocking_acquire_over_http_is_granted_when_the_holder_releases(gw: Gateways) -> None:
    await gw.ok("n1", "/lock/acquire", {"resource": "r", "owner": "a"})
    waiting = asyncio.create_task(gw.post("n3", "/lock/acquire", {"resource": "r", "owner": "b", "timeout": 10}))
    locks = gw.cluster.machine("n3").components["lock"]
    assert isinstance(locks, LockMachine)
    await eventually(lambda: locks.waits("r", "b"), "b queued for r")
    await gw.ok("n2", "/lock/release", {"resource": "r", "owner": "a"})
    status, granted = await asyncio.wait_for(waiting, 10)
    assert status == 200 and granted["owner"] == "b"


async def test_queue_routes(gw: Gateways) -> None:
    one = await gw.ok("n1", "/queue/publish", {"topic": "t", "data": {"x": 1}, "id": "order-7", "max_deliveries": 2})
    assert one == {"id": "order-7", "duplicate": False}
    again = await gw.ok("n2", "/queue/publish", {"topic": "t", "data": {"x": 1}, "id": "order-7"})
    assert again == {"id": "order-7", "duplicate": True}
    batch = await gw.ok("n3", "/queue/publish_batch", {"topic": "t", "messages": [{"data": "a"}, {"raw": "AAE="}]})
    assert [r["duplicate"] for r in batch["results"]] == [False, False]
    stats = await gw.ok("n2", "/queue/stats", {"topic": "t"})
    assert (stats["ready"], stats["in_flight"], stats["delayed"], stats["dead_lettered"]) == ("3", "0", "0", "0")
    taken = await gw.ok("n2", "/queue/consume", {"topic": "t", "consumer": "c1", "max_messages": 3})
    first, second, third = taken["messages"]
    assert (first["id"], first["data"], first["delivery_count"]) == ("order-7", {"x": 1.0}, 1)
    assert second["data"] == "a" and third["raw"] == "AAE="  # bytes: base64 in protobuf's JSON mapping
    assert await gw.ok("n3", "/queue/ack", {"topic": "t", "id": "order-7"}) == {}
    extended = {"topic": "t", "id": second["id"], "receipt": second["receipt"], "visibility_timeout": 60}
    assert await gw.ok("n1", "/queue/extend_visibility", extended) == {}
    nacked = await gw.ok("n1", "/queue/nack", {"topic": "t", "id": third["id"], "receipt": third["receipt"]})
    assert nacked == {"dead_lettered": False}
    stats = await gw.ok("n3", "/queue/stats", {"topic": "t", "consistency": "local"})
    assert (stats["ready"], stats["in_flight"], stats["in_flight_by_consumer"]) == ("1", "1", {"c1": "1"})


async def test_a_long_poll_over_http_returns_when_a_message_arrives(gw: Gateways) -> None:
    poll = asyncio.create_task(gw.post("n2", "/queue/consume", {"topic": "late", "consumer": "c", "wait_timeout": 10}))
    hub = gw.cluster.nodes["n2"].hub
    await eventually(lambda: ready_key("late") in hub._waiting, "the long poll waits for 'late'")
    await gw.ok("n3", "/queue/publish", {"topic": "late", "data": 5})
    status, answer = await asyncio.wait_for(poll, 10)
    assert status == 200 and [m["data"] for m in answer["messages"]] == [5.0]


async def test_a_long_poll_answers_empty_before_the_http_deadline(gw: Gateways) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, answer = await gw.post(
        "n1", "/queue/consume", {"topic": "idle", "consumer": "c", "wait_timeout": 10}, **{TIMEOUT_HEADER: "1S"}
    )
    assert (status, answer) == (200, {"messages": []})  # cut short like over gRPC, not a 504
    assert loop.time() - began < 1.0


async def test_cache_routes(gw: Gateways) -> None:
    put = await gw.ok("n1", "/cache/put", {"key": "k", "value": {"x": 1}})
    version = put["version"]
    got = await gw.ok("n2", "/cache/get", {"key": "k"})
    assert got == {"found": True, "value": {"x": 1.0}, "version": version, "read_index": got["read_index"]}
    assert int(got["read_index"]) >= int(version)
    swapped = await gw.ok("n3", "/cache/compare_and_set", {"key": "k", "expected_version": version, "value": [1, "b"]})
    assert int(swapped["version"]) > int(version)
    local = await gw.ok("n3", "/cache/get", {"key": "k", "consistency": "local"})
    assert (local["value"], local["version"]) == ([1.0, "b"], swapped["version"])
    gone = await gw.ok("n3", "/cache/invalidate", {"key": "k"})
    assert gone["existed"] is True and gone["version"] == swapped["version"]
    miss = await gw.ok("n2", "/cache/get", {"key": "k"})
    assert (miss["found"], miss["version"], "value" in miss) == (False, "0", False)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "utf-32-be"])
async def test_a_body_in_any_encoding_json_allows_is_read_as_json_loads_reads_bytes(gw: Gateways, encoding: str) -> None:
    """RFC 8259 asks for UTF-8, but json.loads also reads UTF-16 and UTF-32 (told by the
    first bytes); the gateway, which decodes bodies with a decoder of its own, reads them
    the same way."""
    body = json.dumps({"key": "k\u00e9", "value": "\u20ac"}).encode(encoding)
    status, answer = await gw.post("n1", "/cache/put", body)
    assert status == 200, answer
    got = await gw.ok("n1", "/cache/get", {"key": "k\u00e9"})
    assert got["value"] == "\u20ac"


async def test_cluster_routes_answer_get_with_the_nodes_view(gw: Gateways) -> None:
    leader = (await gw.cluster.raft.leader()).id
    for nid in NODES:
        status, answer = await gw.get(nid, "/cluster/status")
        assert status == 200 and answer["node_id"] == nid and answer["leader_id"] == leader
        assert answer["role"] == ("NODE_ROLE_LEADER" if nid == leader else "NODE_ROLE_FOLLOWER")
        status, members = await gw.get(nid, "/cluster/members")
        assert status == 200
        assert [(m["id"], m["grpc_address"], m["is_leader"], m["is_self"]) for m in members["members"]] == [
            (m, ADDRESSES[m].grpc, m == leader, m == nid) for m in NODES
        ]
        status, answer = await gw.get(nid, "/cluster/leader")
        assert (status, answer) == (200, {"leader_id": leader, "grpc_address": ADDRESSES[leader].grpc})
