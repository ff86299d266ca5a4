"""`/health` and `/raft/state` on the in-process cluster: each node's own view."""

from __future__ import annotations

import time
from types import SimpleNamespace

from server.gateway.status import Address, NodeStatus
from tests.gateway.conftest import ADDRESSES, NODES, Gateways


async def test_health_is_200_on_every_node_once_a_leader_is_known(gw: Gateways) -> None:
    leader = (await gw.cluster.raft.leader()).id
    for nid in NODES:
        status, answer = await gw.get(nid, "/health")
        reason = "leader" if nid == leader else f"following {leader}"
        assert (status, answer) == (200, {"status": "ok", "reason": reason})


async def test_raft_state_names_the_leader_with_its_grpc_and_http_addresses(gw: Gateways) -> None:
    leader = (await gw.cluster.raft.leader()).id
    await gw.cluster.raft.converged()
    for nid in NODES:
        status, state = await gw.get(nid, "/raft/state")
        replica = gw.cluster.raft.replica(nid)
        assert status == 200
        assert state["node_id"] == nid and state["term"] == replica.term >= 1
        assert state["role"] == ("leader" if nid == leader else "follower")
        assert (state["leader"], state["leader_grpc"], state["leader_http"]) == (
            leader,
            ADDRESSES[leader].grpc,
            ADDRESSES[leader].http,
        )
        assert state["commit_index"] >= state["applied_index"] >= 1
        assert [(m["id"], m["grpc"], m["http"], m["self"], m["leader"]) for m in state["members"]] == [
            (m, ADDRESSES[m].grpc, ADDRESSES[m].http, m == nid, m == leader) for m in NODES
        ]
        assert state["replica"]["id"] == nid and state["replica"]["stopped"] is None


async def test_health_is_503_with_the_reason_once_the_replica_stopped(gw: Gateways) -> None:
    await gw.cluster.raft.leader()
    await gw.cluster.crash("n3")  # the replica stops; this test's HTTP app stays up
    status, answer = await gw.get("n3", "/health")
    assert status == 503 and answer["status"] == "unavailable" and "n3 was stopped" in answer["reason"]


async def test_last_contact_and_sending_per_peer_come_from_the_node_and_unknown_http_is_null(gw: Gateways) -> None:
    leader = (await gw.cluster.raft.leader()).id
    me, other = (nid for nid in NODES if nid != leader)
    now = time.monotonic()
    members = {nid: Address(f"{nid}:1", f"http://{nid}:8001" if nid == me else None) for nid in NODES}
    status = NodeStatus(
        gw.cluster.raft.replica(me),
        members,
        lambda: {leader: now - 1.5},
        lambda: {leader: SimpleNamespace(last_sent=now - 0.25), other: SimpleNamespace(last_sent=None)},
    )
    state = status.raft_state()
    by_id = {m["id"]: m for m in state["members"]}  # type: ignore[attr-defined]
    heard, sent = by_id[leader]["last_heard_s"], by_id[leader]["last_sent_s"]
    assert heard >= 1.5 and heard < 3 and sent >= 0.25 and sent < 2
    assert by_id[other]["last_heard_s"] is None and by_id[other]["last_sent_s"] is None
    assert by_id[me]["last_heard_s"] is None and by_id[me]["http"] == f"http://{me}:8001"
    assert (state["leader_grpc"], state["leader_http"]) == (f"{leader}:1", None)  # unknown, never guessed
