"""The ClusterService: every node answers from its own view of the cluster."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from dsync.v1 import cluster_pb2, cluster_pb2_grpc
from server.api.cluster_service import ClusterServicer, add_cluster_service
from server.api.context import ServiceContext
from server.api.events import EventHub
from server.fsm.router import DsyncStateMachine
from tests.api.harness import ServiceCluster, service_cluster
from tests.replica.cluster import eventually

NODES = ("n1", "n2", "n3")
ADDRESSES = {nid: f"{nid}.example:5005{i}" for i, nid in enumerate(NODES, 1)}
HEARD = 2.0  # seconds since every node last heard from the next one


def last_contact_of(nid: str) -> dict[str, float]:
    """This node heard from the next node (cyclically) HEARD seconds ago, from the other never."""
    following = NODES[(NODES.index(nid) + 1) % len(NODES)]
    return {following: time.monotonic() - HEARD}


def register(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    contact = last_contact_of(ctx.replica.id)
    return add_cluster_service(server, ctx, ADDRESSES, lambda: contact)


@pytest.fixture
async def cluster() -> AsyncIterator[ServiceCluster]:
    async with service_cluster(register=[register], components=dict) as cluster:
        yield cluster


def stub(cluster: ServiceCluster, nid: str) -> cluster_pb2_grpc.ClusterServiceAsyncStub:
    return cluster_pb2_grpc.ClusterServiceStub(cluster.channel(nid))


async def test_every_node_reports_its_own_raft_status(cluster: ServiceCluster) -> None:
    leader = await cluster.raft.leader()
    for nid in NODES:
        status = await stub(cluster, nid).Status(cluster_pb2.StatusRequest())
        replica = cluster.raft.replica(nid)
        assert status.node_id == nid
        assert status.leader_id == leader.id
        expected = cluster_pb2.NODE_ROLE_LEADER if nid == leader.id else cluster_pb2.NODE_ROLE_FOLLOWER
        assert status.role == expected
        assert status.term == replica.term >= 1
        assert status.applied_index <= status.commit_index <= replica.commit_index


async def test_members_lists_everyone_once_with_leader_self_and_contact(cluster: ServiceCluster) -> None:
    leader = await cluster.raft.leader()
    for nid in NODES:
        members = (await stub(cluster, nid).Members(cluster_pb2.MembersRequest())).members
        assert [(m.id, m.grpc_address) for m in members] == sorted(ADDRESSES.items())
        assert [m.id for m in members if m.is_self] == [nid]
        assert [m.id for m in members if m.is_leader] == [leader.id]
        heard = {m.id: m.last_contact_seconds for m in members if m.HasField("last_contact_seconds")}
        assert list(heard) == list(last_contact_of(nid))
        assert all(HEARD <= seconds < HEARD + 5 for seconds in heard.values())


async def test_leader_names_the_leader_and_its_address_on_every_node(cluster: ServiceCluster) -> None:
    leader = await cluster.raft.leader()
    for nid in NODES:
        answer = await stub(cluster, nid).Leader(cluster_pb2.LeaderRequest())
        assert (answer.leader_id, answer.grpc_address) == (leader.id, ADDRESSES[leader.id])


async def test_a_node_cut_off_from_the_majority_answers_leader_with_unavailable(cluster: ServiceCluster) -> None:
    alone = "n1"
    for nid in NODES:
        if nid != alone:
            await cluster.crash(nid)
    replica = cluster.raft.replica(alone)
    await eventually(lambda: not replica.leader_id, f"{alone} gave up on its leader")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(cluster, alone).Leader(cluster_pb2.LeaderRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "knows no leader" in (caught.value.details() or "")
    status = await stub(cluster, alone).Status(cluster_pb2.StatusRequest())
    assert status.leader_id == "" and status.role != cluster_pb2.NODE_ROLE_LEADER
    members = (await stub(cluster, alone).Members(cluster_pb2.MembersRequest())).members
    assert not any(m.is_leader for m in members)


async def test_members_must_include_the_node_itself(cluster: ServiceCluster) -> None:
    replica = cluster.raft.replica("n1")
    ctx = ServiceContext(replica, DsyncStateMachine({}), EventHub())
    with pytest.raises(ValueError, match="must include this node, 'n1'"):
        ClusterServicer(ctx, {"n2": ADDRESSES["n2"]})


async def test_without_a_contact_source_no_member_reports_last_contact(cluster: ServiceCluster) -> None:
    ctx = ServiceContext(cluster.raft.replica("n2"), DsyncStateMachine({}), EventHub())
    servicer = ClusterServicer(ctx, ADDRESSES)
    members = (await servicer.Members(cluster_pb2.MembersRequest(), None)).members  # type: ignore[arg-type]
    assert len(members) == 3 and not any(m.HasField("last_contact_seconds") for m in members)
