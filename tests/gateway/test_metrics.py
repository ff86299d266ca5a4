"""/metrics: the series exist, move with the work done, stay per node, and carry no
per-resource, per-topic or per-key labels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import grpc
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dsync.v1 import cache_pb2, cache_pb2_grpc, cluster_pb2, cluster_pb2_grpc
from server.api.interceptors import RequestStats
from server.config import load
from server.fsm.queue import QueueMachine
from server.gateway.metrics import node_registry
from server.gateway.raft_metrics import RaftCollector
from server.gateway.request_metrics import RequestCollector
from server.gateway.service_metrics import ServiceCollector
from server.node import Node
from tests.gateway.conftest import Gateways
from server.cluster import free_ports
from tests.replica.cluster import eventually

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def in_process_registry(gw: Gateways, nid: str) -> CollectorRegistry:
    """The node's collectors over the harness' objects (its transport is the in-memory one)."""
    machine = gw.cluster.machine(nid)
    servicers = gw.servicers[nid]
    received = SimpleNamespace(
        batches=0, messages=0, malformed=0, misaddressed=0, strangers=0, foreign_streams=0, unauthenticated_streams=0
    )
    return node_registry(
        [
            RaftCollector(gw.cluster.raft.replica(nid), dict, received, dict),
            ServiceCollector(
                machine.components["lock"],  # type: ignore[arg-type]
                servicers["lock"].stats,
                machine.components["queue"],  # type: ignore[arg-type]
                machine.components["cache"],  # type: ignore[arg-type]
                servicers["cache"].stats,
            ),
            RequestCollector(RequestStats(), gw.requests[nid]),
        ]
    )


async def test_service_series_follow_the_work_and_name_no_resource_topic_or_key(gw: Gateways) -> None:
    nid = "n2"
    await gw.ok(nid, "/lock/acquire", {"resource": "secret-resource", "owner": "secret-owner"})
    status, _ = await gw.post(nid, "/lock/acquire", {"resource": "secret-resource", "owner": "o2", "timeout": 0.2})
    assert status == 409
    await gw.ok(nid, "/cache/put", {"key": "secret-key", "value": 1})
    await gw.ok(nid, "/cache/get", {"key": "secret-key"})
    await gw.ok(nid, "/cache/get", {"key": "other-key"})
    await gw.ok(nid, "/queue/publish", {"topic": "secret-topic", "data": 1, "max_deliveries": 1})
    await gw.ok(nid, "/queue/publish", {"topic": "secret-topic", "data": 2})
    (first,) = (await gw.ok(nid, "/queue/consume", {"topic": "secret-topic", "consumer": "c"}))["messages"]
    assert (await gw.ok(nid, "/queue/nack", {"topic": "secret-topic", "id": first["id"]}))["dead_lettered"]
    await gw.ok(nid, "/queue/consume", {"topic": "secret-topic", "consumer": "c", "visibility_timeout": 0.05})
    queue = gw.cluster.machine(nid).components["queue"]
    assert isinstance(queue, QueueMachine)
    await eventually(lambda: queue.ready_count("secret-topic") == 1, "the message ready again after its timeout")
    assert (await gw.ok(nid, "/queue/consume", {"topic": "secret-topic", "consumer": "c"}))["messages"]
    await gw.cluster.raft.converged()

    text = generate_latest(in_process_registry(gw, nid)).decode()
    series = parse(text)
    assert "secret" not in text
    assert (value(series, "dsync_lock_holders"), value(series, "dsync_lock_waiters")) == (1, 0)
    assert value(series, "dsync_lock_wait_seconds_count", outcome="not_granted") == 1
    assert 0.2 <= value(series, "dsync_lock_wait_seconds_sum", outcome="not_granted") < 5
    assert (value(series, "dsync_cache_hits_total"), value(series, "dsync_cache_misses_total")) == (1, 1)
    assert value(series, "dsync_cache_entries") == 1
    assert value(series, "dsync_queue_messages", state="in_flight") == 1
    assert value(series, "dsync_queue_messages", state="ready") == 1  # the dead letter, in secret-topic.dlq
    assert value(series, "dsync_queue_redeliveries_total") == 1
    assert value(series, "dsync_queue_dead_lettered_total") == 1
    assert value(series, "dsync_http_requests_total", route="/lock/acquire", status="409") == 1
    assert value(series, "dsync_http_request_seconds_count", route="/cache/get") == 2
    assert value(series, "dsync_raft_proposals_committed_total") >= 8
    assert value(series, "dsync_raft_commit_seconds_count") == value(series, "dsync_raft_proposals_committed_total")


async def test_the_leader_shows_how_far_behind_each_follower_is(gw: Gateways) -> None:
    raft = gw.cluster.raft
    leader = await raft.leader()
    behind, other = raft.others(leader.id)

    def lag(peer: str) -> float | None:
        series = parse(generate_latest(in_process_registry(gw, leader.id)).decode())
        return series.get(("dsync_raft_follower_lag_entries", frozenset({("peer", peer)})))

    await eventually(lambda: lag(behind.id) == lag(other.id) == 0, "both followers caught up")
    raft.partition([leader.id, other.id], [behind.id])
    for i in range(5):
        await gw.ok(leader.id, "/cache/put", {"key": f"k{i}", "value": i})
    await eventually(lambda: lag(other.id) == 0, "the connected follower caught up")
    assert (lag(behind.id) or 0) >= 5
    raft.heal()
    await eventually(lambda: lag(behind.id) == 0, "the partitioned follower caught up")
    followers = generate_latest(in_process_registry(gw, other.id)).decode()
    assert "dsync_raft_follower_lag_entries{" not in followers


# ---------------------------------------------------------------------- a real node


@asynccontextmanager
async def real_node(data_dir: Path, **env: str) -> AsyncIterator[Node]:
    """A started one-node cluster (private redis-server) on free loopback ports."""
    grpc_port, http_port, metrics_port = free_ports(3)
    config = load(
        {
            "NODE_ID": "solo",
            "GRPC_PORT": str(grpc_port),
            "HTTP_PORT": str(http_port),
            "METRICS_PORT": str(metrics_port),
            "DATA_DIR": str(data_dir),
            "TICK_MS": "10",
            **env,
        }
    )
    node = Node(config)
    try:
        await node.start()
        assert node.replica is not None
        await node.replica.wait_for_leader(10)
        yield node
    finally:
        await node.stop()


async def scrape(http: aiohttp.ClientSession, node: Node) -> Series:
    async with http.get(f"http://127.0.0.1:{node.config.metrics_port}/metrics") as response:
        assert response.status == 200 and response.content_type == "text/plain"
        return parse(await response.text())


MAIN_SERIES = [
    ("dsync_raft_term", {}),
    ("dsync_raft_role", {"role": "leader"}),
    ("dsync_raft_has_leader", {}),
    ("dsync_raft_leader_changes_total", {}),
    ("dsync_raft_commit_index", {}),
    ("dsync_raft_applied_index", {}),
    ("dsync_raft_proposals_committed_total", {}),
    ("dsync_raft_append_seconds_count", {}),
    ("dsync_raft_commit_seconds_count", {}),
    ("dsync_redis_save_seconds_count", {}),
    ("dsync_lock_holders", {}),
    ("dsync_lock_waiters", {}),
    ("dsync_queue_messages", {"state": "ready"}),
    ("dsync_queue_redeliveries_total", {}),
    ("dsync_queue_dead_lettered_total", {}),
    ("dsync_cache_hits_total", {}),
    ("dsync_cache_misses_total", {}),
    ("dsync_cache_evictions_total", {}),
    ("process_cpu_seconds_total", {}),
]


async def test_a_real_nodes_metrics_exist_and_move_with_writes(tmp_path: Path) -> None:
    async with real_node(tmp_path / "solo") as node, aiohttp.ClientSession() as http:
        before = await scrape(http, node)
        for name, labels in MAIN_SERIES:
            assert (name, frozenset(labels.items())) in before, name
        assert value(before, "dsync_raft_role", role="leader") == 1
        assert value(before, "dsync_raft_leader_changes_total") == 1

        base = f"http://127.0.0.1:{node.config.http_port}"
        async with http.post(f"{base}/cache/put", json={"key": "k", "value": 1}) as response:
            assert response.status == 200
        async with http.post(f"{base}/lock/acquire", json={"resource": "r", "owner": "o"}) as response:
            assert response.status == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.config.grpc_port}") as channel:
            await cluster_pb2_grpc.ClusterServiceStub(channel).Status(cluster_pb2.StatusRequest(), timeout=5)

        after = await scrape(http, node)
        for name in ("dsync_raft_proposals_committed_total", "dsync_raft_commit_seconds_count"):
            assert value(after, name) >= value(before, name) + 2, name
        assert value(after, "dsync_raft_commit_index") >= value(before, "dsync_raft_commit_index") + 2
        assert value(after, "dsync_raft_append_seconds_count") > value(before, "dsync_raft_append_seconds_count")
        assert value(after, "dsync_redis_save_seconds_count") > value(before, "dsync_redis_save_seconds_count")
        assert value(after, "dsync_lock_holders") == 1 and value(after, "dsync_cache_entries") == 1
        assert value(after, "dsync_http_requests_total", route="/cache/put", status="200") == 1
        labels = {"service": "dsync.v1.ClusterService", "method": "Status"}
        assert value(after, "dsync_grpc_server_handled_total", **labels, code="OK") == 1
        assert value(after, "dsync_grpc_server_handling_seconds_count", **labels) == 1


async def test_snapshots_are_counted_and_timed(tmp_path: Path) -> None:
    async with real_node(tmp_path / "solo", SNAPSHOT_ENTRIES="100") as node, aiohttp.ClientSession() as http:
        assert value(await scrape(http, node), "dsync_raft_snapshots_total") == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.config.grpc_port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for i in range(120):
                await stub.Put(cache_pb2.PutRequest(key=f"k{i}", value=struct_pb2.Value(number_value=i)), timeout=5)
        after = await scrape(http, node)
        assert value(after, "dsync_raft_snapshots_total") >= 1
        assert value(after, "dsync_raft_snapshot_seconds_total") > 0
        assert value(after, "dsync_raft_snapshots_installed_total") == 0  # alone: nobody sends it one


async def test_two_nodes_in_one_process_each_export_only_their_own(tmp_path: Path) -> None:
    async with real_node(tmp_path / "a") as a, real_node(tmp_path / "b") as b, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{a.config.http_port}/cache/put", json={"key": "k", "value": 1}) as r:
            assert r.status == 200
        seen_a, seen_b = await scrape(http, a), await scrape(http, b)
        assert value(seen_a, "dsync_cache_entries") == 1 and value(seen_b, "dsync_cache_entries") == 0
        assert value(seen_a, "dsync_http_requests_total", route="/cache/put", status="200") == 1
        assert ("dsync_http_requests_total", frozenset({("route", "/cache/put"), ("status", "200")})) not in seen_b
        proposals = "dsync_raft_proposals_committed_total"
        assert value(seen_a, proposals) > value(seen_b, proposals)
