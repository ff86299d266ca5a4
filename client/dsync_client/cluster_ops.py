"""ClusterService calls: each node answers from its own view, without asking the leader."""

from __future__ import annotations

from dataclasses import dataclass

from dsync.v1 import cluster_pb2

from .ops import Op, method

STATUS = method(cluster_pb2.DESCRIPTOR, "ClusterService", "Status", cluster_pb2.StatusResponse)
MEMBERS = method(cluster_pb2.DESCRIPTOR, "ClusterService", "Members", cluster_pb2.MembersResponse)
LEADER = method(cluster_pb2.DESCRIPTOR, "ClusterService", "Leader", cluster_pb2.LeaderResponse)

_ROLES = {
    cluster_pb2.NODE_ROLE_FOLLOWER: "follower",
    cluster_pb2.NODE_ROLE_PRE_CANDIDATE: "pre-candidate",
    cluster_pb2.NODE_ROLE_CANDIDATE: "candidate",
    cluster_pb2.NODE_ROLE_LEADER: "leader",
}


@dataclass(frozen=True)
class NodeStatus:
    """One node's Raft state; `leader` is empty when it knows none."""

    node: str
    role: str
    term: int
    leader: str
    commit_index: int
    applied_index: int


@dataclass(frozen=True)
class Member:
    """`last_contact` is seconds since the answering node heard from it (None for itself,
    or a member it has not heard from)."""

    id: str
    address: str
    is_leader: bool
    is_self: bool
    last_contact: float | None


@dataclass(frozen=True)
class Leader:
    id: str
    address: str


def status() -> Op[cluster_pb2.StatusResponse, NodeStatus]:
    return Op(
        STATUS,
        cluster_pb2.StatusRequest(),
        lambda r: NodeStatus(
            r.node_id, _ROLES.get(r.role, "unknown"), r.term, r.leader_id, r.commit_index, r.applied_index
        ),
    )


def members() -> Op[cluster_pb2.MembersResponse, list[Member]]:
    return Op(
        MEMBERS,
        cluster_pb2.MembersRequest(),
        lambda r: [
            Member(
                m.id,
                m.grpc_address,
                m.is_leader,
                m.is_self,
                m.last_contact_seconds if m.HasField("last_contact_seconds") else None,
            )
            for m in r.members
        ],
    )


def leader() -> Op[cluster_pb2.LeaderResponse, Leader]:
    return Op(LEADER, cluster_pb2.LeaderRequest(), lambda r: Leader(r.leader_id, r.grpc_address))
