"""The gateway's error mapping: each failure gets its HTTP status and the one JSON body
{code, status, message, details}; bad input never takes the node down."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dsync.v1 import lock_pb2
from server.api.interceptors import RequestStats
from server.fsm.json_values import MAX_JSON_DEPTH
from server.fsm.lock import LockMachine
from server.gateway.app import http_app
from server.gateway.errors import MAX_BODY_BYTES
from server.gateway.status import NodeStatus
from server.gateway.transcoder import TIMEOUT_HEADER, Route, timeout_seconds
from tests.gateway.conftest import ADDRESSES, NODES, PROPOSE_TIMEOUT, Gateways
from tests.replica.cluster import eventually


def assert_error(answer: Any, status: str, *fragments: str) -> None:
    assert set(answer) == {"code", "status", "message", "details"}, answer
    assert answer["status"] == status and answer["details"] == [], answer
    for fragment in fragments:
        assert fragment in answer["message"], (fragment, answer)


async def test_a_held_lock_is_409_at_once_without_a_timeout(gw: Gateways) -> None:
    await gw.ok("n1", "/lock/acquire", {"resource": "r1", "owner": "alice"})
    status, answer = await gw.post("n2", "/lock/acquire", {"resource": "r1", "owner": "bob"})
    assert status == 409 and answer["code"] == 10
    assert_error(answer, "ABORTED", "held exclusively by alice")


async def test_a_deadlock_is_409_naming_the_cycle(gw: Gateways) -> None:
    await gw.ok("n1", "/lock/acquire", {"resource": "r1", "owner": "a"})
    await gw.ok("n2", "/lock/acquire", {"resource": "r2", "owner": "b"})
    a_waits = asyncio.create_task(gw.post("n1", "/lock/acquire", {"resource": "r2", "owner": "a", "timeout": 30}))
    locks = gw.cluster.machine("n3").components["lock"]
    assert isinstance(locks, LockMachine)
    await eventually(lambda: locks.waits("r2", "a"), "a queued for r2")
    status, answer = await gw.post("n3", "/lock/acquire", {"resource": "r1", "owner": "b", "timeout": 30})
    assert status == 409
    assert_error(answer, "ABORTED", "deadlock")
    await gw.ok("n2", "/lock/release", {"resource": "r2", "owner": "b"})
    status, granted = await asyncio.wait_for(a_waits, 10)
    assert status == 200 and granted["resource"] == "r2"


def _nested(depth: int) -> object:
    """A JSON value of `depth` objects inside one another."""
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_values_nested_to_the_limit_are_stored(gw: Gateways) -> None:
    deep = _nested(MAX_JSON_DEPTH)
    await gw.ok("n1", "/cache/put", {"key": "deep", "value": deep})
    assert (await gw.ok("n2", "/cache/get", {"key": "deep"}))["value"] == deep
    await gw.ok("n3", "/queue/publish", {"topic": "deep", "data": deep, "id": "d1"})
    delivered = await gw.ok("n1", "/queue/consume", {"topic": "deep", "consumer": "c"})
    assert delivered["messages"][0]["data"] == deep


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/lock/acquire", {"resource": "", "owner": "x"}, "resource"),
        ("/lock/acquire", {"resource": "r", "owner": ""}, "owner"),
        ("/lock/acquire", {"resource": "r", "owner": "x", "timeout": -1}, "timeout"),
        ("/lock/acquire", {"resource": "r", "owner": "x", "mode": "weird"}, "mode"),
        ("/lock/acquire", {"resource": "r", "owner": "x", "timeout": "soon"}, "timeout"),
        ("/lock/acquire", {"resource": "r", "owner": "x", "colour": "red"}, "colour"),
        ("/queue/publish", {"topic": "", "data": 1}, "topic"),
        ("/queue/consume", {"topic": "t", "consumer": ""}, "consumer"),
        ("/cache/put", {"key": "", "value": 1}, "key"),
        ("/cache/get", {"key": "k", "consistency": "sometimes"}, "consistency"),
        # protobuf's JSON mapping alone would truncate these to a mode, or decode what it can
        ("/lock/acquire", {"resource": "r", "owner": "x", "mode": 2.9}, "mode"),
        ("/lock/acquire", {"resource": "r", "owner": "x", "mode": True}, "mode"),
        ("/queue/publish", {"topic": "t", "raw": "@@@@"}, "raw"),
        ("/queue/publish_batch", {"topic": "t", "messages": [{"data": 1}, {"raw": "SGVs!!bG8="}]}, "messages[1].raw"),
        ("/lock/list", {"page_size": 1, "pageSize": 5}, "page_size"),
        # deeper than protobuf decodes again: refused before it costs a log entry
        ("/cache/put", {"key": "k", "value": _nested(MAX_JSON_DEPTH + 1)}, "value['a']"),
        ("/queue/publish", {"topic": "t", "data": _nested(MAX_JSON_DEPTH + 1)}, "data['a']"),
        ("/queue/publish", {"topic": "t", "data": 1, "id": "a\u0085b"}, "id"),
        ("/queue/consume", {"topic": "t", "consumer": "a\u0085b"}, "consumer"),
    ],
)
async def test_invalid_input_is_400_naming_the_field(gw: Gateways, path: str, body: object, field: str) -> None:
    status, answer = await gw.post("n2", path, body)
    assert status == 400 and answer["code"] == 3
    assert_error(answer, "INVALID_ARGUMENT", field)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"resource": "r1",', "Expecting"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "bad request"),
        (b'"just a string"', "JSON object"),
        (b'{"resource": "r1", "owner": "o", "resource": "r2"}', "'resource' appears twice"),
        (b'{"resource": "r1", "owner": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests too deeply"),
    ],
)
async def test_a_malformed_body_is_400(gw: Gateways, raw: bytes, fragment: str) -> None:
    status, answer = await gw.post("n1", "/lock/acquire", raw)
    assert status == 400
    assert_error(answer, "INVALID_ARGUMENT", fragment)


async def test_unknown_ids_are_404_and_unheld_locks_412(gw: Gateways) -> None:
    status, answer = await gw.post("n1", "/queue/ack", {"topic": "t", "id": "nope"})
    assert status == 404
    assert_error(answer, "NOT_FOUND", "nope")
    status, answer = await gw.post("n2", "/lock/release", {"resource": "r9", "owner": "x"})
    assert status == 412
    assert_error(answer, "FAILED_PRECONDITION", "x does not hold 'r9'")


async def test_an_expired_deadline_is_504(gw: Gateways) -> None:
    await gw.ok("n1", "/lock/acquire", {"resource": "r", "owner": "a"})
    loop = asyncio.get_running_loop()
    began = loop.time()
    body = {"resource": "r", "owner": "b", "timeout": 30}
    status, answer = await gw.post("n2", "/lock/acquire", body, **{TIMEOUT_HEADER: "300m"})
    assert status == 504 and 0.25 < loop.time() - began < 5
    assert_error(answer, "DEADLINE_EXCEEDED", TIMEOUT_HEADER)
    status, answer = await gw.post("n2", "/lock/acquire", body, **{TIMEOUT_HEADER: "soon"})
    assert status == 400
    assert_error(answer, "INVALID_ARGUMENT", TIMEOUT_HEADER)


def test_grpc_timeout_values_read_as_grpc_writes_them() -> None:
    got = [timeout_seconds(v) for v in ("2S", "1500m", "1M", "1H", "250000u", "7n")]
    assert got == pytest.approx([2.0, 1.5, 60.0, 3600.0, 0.25, 7e-9])
    for bad in ("", "2", "S", "2s", "123456789S", "-1S", "1.5S"):
        with pytest.raises(ValueError, match=TIMEOUT_HEADER):
            timeout_seconds(bad)


async def test_without_a_quorum_writes_and_health_are_503(gw: Gateways) -> None:
    survivor = NODES[0]
    for nid in NODES[1:]:
        await gw.cluster.crash(nid)
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, answer = await gw.post(survivor, "/cache/put", {"key": "k", "value": 1})
    assert status == 503 and loop.time() - began < PROPOSE_TIMEOUT + 2
    assert_error(answer, "UNAVAILABLE")
    status, answer = await gw.post(survivor, "/cache/get", {"key": "k"})  # a linearizable read needs a quorum too
    assert status == 503
    replica = gw.cluster.raft.replica(survivor)
    await eventually(lambda: not replica.leader_id, f"{survivor} gives up on a leader it cannot hear")
    status, health = await gw.get(survivor, "/health")
    assert status == 503 and health["status"] == "unavailable" and "no leader known" in health["reason"]


async def test_an_oversized_body_is_413_and_the_node_keeps_serving(gw: Gateways) -> None:
    huge = b'{"key": "k", "value": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, answer = await gw.post("n1", "/cache/put", huge)
    assert status == 413
    assert_error(answer, "RESOURCE_EXHAUSTED", str(MAX_BODY_BYTES))
    assert (await gw.ok("n1", "/cache/put", {"key": "k", "value": "small"}))["version"]


async def test_unknown_routes_and_verbs_get_the_json_error_body(gw: Gateways) -> None:
    status, answer = await gw.post("n1", "/lock/steal", {})
    assert status == 404
    assert_error(answer, "NOT_FOUND", "/lock/steal")
    status, answer = await gw.get("n1", "/lock/acquire")
    assert status == 405
    assert_error(answer, "UNIMPLEMENTED", "POST")
    status, answer = await gw.get("n1", "/cluster/leader", extra="1")
    assert status == 400
    assert_error(answer, "INVALID_ARGUMENT", "extra")


async def test_a_servicer_bug_is_500_json_and_the_app_keeps_serving(gw: Gateways) -> None:
    async def broken(request: object, context: object) -> lock_pb2.ReleaseResponse:
        raise RuntimeError("a bug")

    route = Route("POST", "/lock/broken", "*", lock_pb2.ReleaseRequest.DESCRIPTOR, broken, "/t.T/Broken")
    requests = RequestStats()
    status_view = NodeStatus(gw.cluster.raft.replica("n1"), ADDRESSES, lambda: {}, lambda: {})
    client: TestClient[Any, Any] = TestClient(TestServer(http_app([route], status_view, requests)))
    await client.start_server()
    try:
        async with client.post("/lock/broken", json={"resource": "r", "owner": "o"}) as response:
            assert response.status == 500
            assert_error(await response.json(), "INTERNAL", "see its log")
        async with client.get("/health") as response:
            assert response.status == 200
        assert requests.counts == {("/lock/broken", "500"): 1, ("/health", "200"): 1}
    finally:
        await client.close()


async def test_query_parameters_on_a_body_route_are_400_not_ignored(gw: Gateways) -> None:
    async with gw.clients["n1"].post("/lock/acquire?resource=q", json={"resource": "r", "owner": "o"}) as response:
        assert response.status == 400
        assert_error(await response.json(), "INVALID_ARGUMENT", "query string", "resource")
    assert (await gw.ok("n2", "/lock/get", {"resource": "r"}))["lock"]["holders"] == []


async def test_a_body_aiohttp_cannot_decode_is_400(gw: Gateways) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with gw.clients["n1"].post("/lock/get", data=b'{"resource": "r1"}', headers=headers) as response:
        assert response.status == 400
        assert_error(await response.json(), "INVALID_ARGUMENT", "content-encoding")


async def test_a_sequence_reused_for_another_call_is_400_naming_it(gw: Gateways) -> None:
    header = {"client_id": "reuser", "sequence": 1}
    await gw.ok("n1", "/cache/put", {"key": "k", "value": 1, "header": header})
    status, answer = await gw.post("n2", "/lock/acquire", {"resource": "r", "owner": "o", "header": header})
    assert status == 400
    assert_error(answer, "INVALID_ARGUMENT", "header.sequence", "different call")
    assert (await gw.ok("n3", "/lock/get", {"resource": "r"}))["lock"]["holders"] == []


MALFORMED = [
    b"POST /cache/get HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", MALFORMED)
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_a_malformed_http_request_is_400_and_one_debug_line_not_a_traceback(
    gw: Gateways, request_bytes: bytes, level: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(level, logger="aiohttp.server")
    server = gw.clients[NODES[0]].server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request_bytes)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.0 400")
        await asyncio.wait_for(reader.read(), 5)  # aiohttp closes the connection after it
    finally:
        writer.close()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert not [r for r in records if r.levelno > logging.DEBUG or r.exc_info], records
    if level == "DEBUG":
        assert [r.getMessage() for r in records] and all(
            r.getMessage().startswith("malformed HTTP request from 127.0.0.1 answered 400: ") for r in records
        ), records
    assert (await gw.get(NODES[0], "/health"))[0] in (200, 503)  # still serving
