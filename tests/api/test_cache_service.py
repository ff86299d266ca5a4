"""The CacheService over real grpc.aio channels to an in-process three-node cluster:
the deployment guide's flow, coherence across nodes, read indexes, CAS, input errors,
TTLs, retries, and reads shaping eviction on every replica."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2

from dsync.fsm.v1 import cache_pb2 as fsm_pb2
from dsync.fsm.v1 import command_pb2
from dsync.v1 import cache_pb2, cache_pb2_grpc, common_pb2
from server.api.cache_service import CacheServicer, add_cache_service
from server.api.context import ServiceContext
from server.api.events import EventHub
from server.api.touches import TouchBatcher
from server.fsm.base import Component
from server.fsm.cache import DEFAULT_MAX_ENTRIES, MAX_KEY_BYTES, CacheMachine
from server.fsm.router import DsyncStateMachine
from server.replica.errors import NoLeader
from tests.api.harness import ServiceCluster, service_cluster
from tests.replica.cluster import eventually

NODES = ("n1", "n2", "n3")
LOCAL = common_pb2.CONSISTENCY_LOCAL


def json(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def stub(cluster: ServiceCluster, nid: str) -> cache_pb2_grpc.CacheServiceAsyncStub:
    return cache_pb2_grpc.CacheServiceStub(cluster.channel(nid))


def cache_of(cluster: ServiceCluster, nid: str) -> CacheMachine:
    cache = cluster.machine(nid).components["cache"]
    assert isinstance(cache, CacheMachine)
    return cache


def caches(max_entries: int = DEFAULT_MAX_ENTRIES) -> Callable[[], dict[str, Component]]:
    return lambda: {"cache": CacheMachine(max_entries)}


@pytest.fixture
async def cluster() -> AsyncIterator[ServiceCluster]:
    async with service_cluster(register=[add_cache_service], components=caches()) as cluster:
        yield cluster


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# ---------------------------------------------------------------------- the guide's flow


async def test_the_deployment_guide_flow_put_get_invalidate_get_across_nodes(cluster: ServiceCluster) -> None:
    put = await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="k", value=json({"x": 1})))
    got = await stub(cluster, "n2").Get(cache_pb2.GetRequest(key="k"))
    assert got.found and json_format.MessageToDict(got.value) == {"x": 1}
    assert got.version == put.version <= got.read_index
    gone = await stub(cluster, "n3").Invalidate(cache_pb2.InvalidateRequest(key="k"))
    assert gone.existed and gone.version == put.version and gone.index > put.version
    miss = await stub(cluster, "n2").Get(cache_pb2.GetRequest(key="k"))
    assert not miss.found and miss.version == 0 and miss.read_index >= gone.index


async def test_the_guide_json_bodies_parse_into_the_requests() -> None:
    put = json_format.Parse('{"key":"k","value":{"x":1},"ttl":2.5}', cache_pb2.PutRequest())
    assert put.key == "k" and put.ttl == 2.5 and put.value == json({"x": 1})
    get = json_format.Parse('{"key":"k","consistency":"CONSISTENCY_LOCAL"}', cache_pb2.GetRequest())
    assert get.consistency == LOCAL
    json_format.Parse('{"key":"k"}', cache_pb2.InvalidateRequest())
    json_format.Parse('{"key":"k","expected_version":"0","value":null}', cache_pb2.CompareAndSetRequest())


# ---------------------------------------------------------------------- coherence


async def test_a_linearizable_get_on_any_node_never_returns_a_value_older_than_an_acknowledged_write(
    cluster: ServiceCluster,
) -> None:
    for i in range(60):
        writer = NODES[i % 3]
        put = await stub(cluster, writer).Put(cache_pb2.PutRequest(key="k", value=json(i)))
        for reader in NODES:
            got = await stub(cluster, reader).Get(cache_pb2.GetRequest(key="k"))
            assert (got.value.number_value, got.version) == (i, put.version), f"stale read on {reader} after {writer}"
            assert got.read_index >= put.version


async def test_concurrent_writes_and_linearizable_reads_never_go_back_in_time(cluster: ServiceCluster) -> None:
    acknowledged = 0

    async def writer() -> None:
        nonlocal acknowledged
        for i in range(1, 31):
            await stub(cluster, NODES[i % 3]).Put(cache_pb2.PutRequest(key="k", value=json(i)))
            acknowledged = i

    async def reader(nid: str) -> None:
        while acknowledged < 30:
            floor = acknowledged  # acknowledged before this Get began
            got = await stub(cluster, nid).Get(cache_pb2.GetRequest(key="k"))
            assert not floor or got.value.number_value >= floor, f"{nid} read {got.value} after {floor} was acknowledged"

    await asyncio.gather(writer(), *(reader(nid) for nid in NODES))


async def test_a_local_get_reflects_an_index_no_later_than_what_its_node_committed(cluster: ServiceCluster) -> None:
    put = await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="k", value=json("v")))
    for nid in NODES:
        got = await stub(cluster, nid).Get(cache_pb2.GetRequest(key="k", consistency=LOCAL))
        replica = cluster.raft.replica(nid)
        assert got.read_index <= replica.commit_index
        assert not got.found or got.version <= got.read_index
        assert got.found == (got.read_index >= put.version)

    async def caught_up_everywhere() -> bool:
        for nid in NODES:
            got = await stub(cluster, nid).Get(cache_pb2.GetRequest(key="k", consistency=LOCAL))
            if not (got.found and got.version == put.version):
                return False
        return True

    await until(caught_up_everywhere, "a LOCAL read on every node sees the put")


# ---------------------------------------------------------------------- writes


async def test_compare_and_set_succeeds_on_the_expected_version_and_names_the_current_one_otherwise(
    cluster: ServiceCluster,
) -> None:
    created = await stub(cluster, "n1").CompareAndSet(
        cache_pb2.CompareAndSetRequest(key="k", expected_version=0, value=json("a"))
    )
    updated = await stub(cluster, "n2").CompareAndSet(
        cache_pb2.CompareAndSetRequest(key="k", expected_version=created.version, value=json("b"))
    )
    assert updated.version > created.version
    error = await rpc_error(
        stub(cluster, "n3").CompareAndSet(
            cache_pb2.CompareAndSetRequest(key="k", expected_version=created.version, value=json("c"))
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"at version {updated.version}" in (error.details() or "")
    got = await stub(cluster, "n3").Get(cache_pb2.GetRequest(key="k"))
    assert got.value.string_value == "b"


async def test_a_retried_put_with_the_same_header_is_applied_once(cluster: ServiceCluster) -> None:
    def header(sequence: int) -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(client_id="client-1", sequence=sequence)

    first = await stub(cluster, "n1").Put(cache_pb2.PutRequest(header=header(1), key="k", value=json("a")))
    second = await stub(cluster, "n2").Put(cache_pb2.PutRequest(header=header(2), key="k", value=json("b")))
    retry = await stub(cluster, "n3").Put(cache_pb2.PutRequest(header=header(1), key="k", value=json("a")))
    assert retry.version == first.version < second.version
    got = await stub(cluster, "n1").Get(cache_pb2.GetRequest(key="k"))
    assert (got.value.string_value, got.version) == ("b", second.version)


async def test_an_entry_expires_after_its_ttl_on_every_node(cluster: ServiceCluster) -> None:
    await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="k", value=json(1), ttl=0.2))
    await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="kept", value=json(1)))
    assert (await stub(cluster, "n2").Get(cache_pb2.GetRequest(key="k"))).found

    async def expired_everywhere() -> bool:
        for nid in NODES:
            if (await stub(cluster, nid).Get(cache_pb2.GetRequest(key="k"))).found:
                return False
        return True

    await until(expired_everywhere, "the entry expired on every node")
    assert (await stub(cluster, "n3").Get(cache_pb2.GetRequest(key="kept"))).found


# ---------------------------------------------------------------------- bad input


def _nan_inside() -> struct_pb2.Value:
    value = json({"a": [1, 2]})
    value.struct_value.fields["a"].list_value.values[1].number_value = math.nan
    return value


HEADER_WITHOUT_CLIENT = common_pb2.RequestHeader(sequence=1)


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("Put", cache_pb2.PutRequest(key="", value=json(1)), "key"),
        ("Put", cache_pb2.PutRequest(key="é" * (MAX_KEY_BYTES // 2 + 1), value=json(1)), "key"),
        ("Put", cache_pb2.PutRequest(key="k"), "value"),
        ("Put", cache_pb2.PutRequest(key="k", value=json("v" * (1 << 20))), "value"),
        ("Put", cache_pb2.PutRequest(key="k", value=_nan_inside()), "value['a'][1]"),
        ("Put", cache_pb2.PutRequest(key="k", value=json(1), ttl=-1), "ttl"),
        ("Put", cache_pb2.PutRequest(key="k", value=json(1), ttl=math.nan), "ttl"),
        ("Put", cache_pb2.PutRequest(key="k", value=json(1), ttl=31 * 24 * 3600), "ttl"),
        ("Put", cache_pb2.PutRequest(key="k", value=json(1), header=HEADER_WITHOUT_CLIENT), "header.client_id"),
        ("Get", cache_pb2.GetRequest(key=""), "key"),
        ("Get", cache_pb2.GetRequest(key="k", consistency=99), "consistency"),  # type: ignore[arg-type]
        ("Invalidate", cache_pb2.InvalidateRequest(key=""), "key"),
        ("CompareAndSet", cache_pb2.CompareAndSetRequest(key="", value=json(1)), "key"),
        ("CompareAndSet", cache_pb2.CompareAndSetRequest(key="k", expected_version=0), "value"),
    ],
    ids=lambda case: case if isinstance(case, str) else "",
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    cluster: ServiceCluster, call: str, request_: object, field: str
) -> None:
    error = await rpc_error(getattr(stub(cluster, "n2"), call)(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert (error.details() or "").startswith(f"{field}: "), error.details()


# ---------------------------------------------------------------------- reads shape eviction


async def test_reads_reach_every_replica_as_touches_and_steer_eviction_alike() -> None:
    async with service_cluster(register=[add_cache_service], components=caches(max_entries=3)) as cluster:
        for key in "abc":
            await stub(cluster, "n1").Put(cache_pb2.PutRequest(key=key, value=json(key)))
        assert (await stub(cluster, "n2").Get(cache_pb2.GetRequest(key="a", consistency=LOCAL))).found
        await eventually(
            lambda: all(cache_of(cluster, nid).keys() == ["b", "c", "a"] for nid in NODES),
            "n2's read of a made it the most recently used key on every replica",
        )
        await stub(cluster, "n3").Put(cache_pb2.PutRequest(key="d", value=json("d")))
        assert not (await stub(cluster, "n1").Get(cache_pb2.GetRequest(key="b"))).found
        await cluster.raft.converged()
        snapshots = {cache_of(cluster, nid).snapshot() for nid in NODES}
        assert len(snapshots) == 1, "replicas hold different caches"
        assert all(cache_of(cluster, nid).evictions == 1 for nid in NODES)


async def test_hits_and_misses_are_counted_by_the_node_that_served_them() -> None:
    servicers: dict[str, CacheServicer] = {}

    def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
        servicers[ctx.replica.id] = servicer = CacheServicer(ctx)
        cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server)
        return "dsync.v1.CacheService"

    async with service_cluster(register=[register], components=caches()) as cluster:
        await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="k", value=json(1)))
        await stub(cluster, "n2").Get(cache_pb2.GetRequest(key="k"))
        await stub(cluster, "n2").Get(cache_pb2.GetRequest(key="k", consistency=LOCAL))
        await stub(cluster, "n3").Get(cache_pb2.GetRequest(key="nope"))
        counts = {nid: (s.stats.hits, s.stats.misses) for nid, s in servicers.items()}
        assert counts == {"n1": (0, 0), "n2": (2, 0), "n3": (0, 1)}


async def test_a_restarted_node_replays_the_log_into_the_same_cache(cluster: ServiceCluster) -> None:
    await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="a", value=json(1)))
    await cluster.crash("n3")
    await stub(cluster, "n1").Put(cache_pb2.PutRequest(key="b", value=json(2)))
    await stub(cluster, "n2").Invalidate(cache_pb2.InvalidateRequest(key="a"))
    await cluster.start("n3")
    await cluster.raft.leader()  # n3 follows it again
    got = await stub(cluster, "n3").Get(cache_pb2.GetRequest(key="b"))
    assert got.found and not (await stub(cluster, "n3").Get(cache_pb2.GetRequest(key="a"))).found
    await cluster.raft.converged()
    assert cache_of(cluster, "n3").snapshot() == cache_of(cluster, "n1").snapshot()


async def test_the_servicer_needs_a_cache_component(cluster: ServiceCluster) -> None:
    ctx = ServiceContext(cluster.raft.replica("n1"), DsyncStateMachine({}), EventHub())
    with pytest.raises(ValueError, match="needs a CacheMachine"):
        CacheServicer(ctx)


# ---------------------------------------------------------------------- the touch batcher


class FakeProposer:
    def __init__(self, fail: bool = False) -> None:
        self.touches: list[list[str]] = []
        self.fail = fail

    async def propose(self, command: bytes) -> object:
        envelope = command_pb2.Command.FromString(command)
        assert not envelope.client_id, "touches are not deduplicated: they carry no client id"
        self.touches.append(list(fsm_pb2.CacheCommand.FromString(envelope.cache).touch.keys))
        if self.fail:
            raise NoLeader("no leader")
        return empty_pb2.Empty()

    async def read_barrier(self) -> int:
        raise AssertionError("touches never read")


async def test_the_batcher_sends_recent_reads_once_per_interval_most_recent_last_and_bounded() -> None:
    proposer = FakeProposer()
    batcher = TouchBatcher(proposer, interval=0.01, max_keys=3)
    for key in ["a", "b", "a", "c", "d"]:
        batcher.record(key)
    await eventually(lambda: len(proposer.touches) == 1, "one touch proposed")
    assert proposer.touches == [["a", "c", "d"]]  # b, the least recently read, fell out
    batcher.record("e")
    await eventually(lambda: len(proposer.touches) == 2, "a second touch for a later read")
    assert proposer.touches[1] == ["e"]


async def test_the_batcher_drops_a_touch_that_fails_and_goes_on() -> None:
    proposer = FakeProposer(fail=True)
    batcher = TouchBatcher(proposer, interval=0.01)
    batcher.record("a")
    await eventually(lambda: batcher.dropped == 1, "the failed touch counted as dropped")
    proposer.fail = False
    batcher.record("b")
    await eventually(lambda: proposer.touches[-1:] == [["b"]], "the next touch sent")


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll an async condition until it holds; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
