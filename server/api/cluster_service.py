"""The public ClusterService: each node answers from its own view, never asking the
leader, so it works on any node that runs -- even one cut off from the others, which
is when an operator needs it most."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc

from dsync.v1 import cluster_pb2, cluster_pb2_grpc
from server.api.context import ServiceContext
from server.api.errors import ServiceError, rpc
from server.raft import Role

Context = grpc.aio.ServicerContext[object, object]
# Peer id -> time.monotonic() when its latest Raft message arrived (RaftPeerServicer.last_contact).
LastContact = Callable[[], Mapping[str, float]]

_ROLES = {
    Role.FOLLOWER: cluster_pb2.NODE_ROLE_FOLLOWER,
    Role.PRE_CANDIDATE: cluster_pb2.NODE_ROLE_PRE_CANDIDATE,
    Role.CANDIDATE: cluster_pb2.NODE_ROLE_CANDIDATE,
    Role.LEADER: cluster_pb2.NODE_ROLE_LEADER,
}


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    """`members`: every member's id -> gRPC address (host:port), this node included."""

    def __init__(
        self, ctx: ServiceContext, members: Mapping[str, str], last_contact: LastContact | None = None
    ) -> None:
        if ctx.replica.id not in members:
            raise ValueError(f"members {sorted(members)} must include this node, {ctx.replica.id!r}")
        self._replica = ctx.replica
        self._members = dict(sorted(members.items()))
        self._last_contact = last_contact

    @rpc
    async def Status(self, request: cluster_pb2.StatusRequest, context: Context) -> cluster_pb2.StatusResponse:
        replica = self._replica
        return cluster_pb2.StatusResponse(
            node_id=replica.id,
            role=_ROLES[replica.role],
            term=replica.term,
            leader_id=replica.leader_id,
            commit_index=replica.commit_index,
            applied_index=replica.applied_index,
        )

    @rpc
    async def Members(self, request: cluster_pb2.MembersRequest, context: Context) -> cluster_pb2.MembersResponse:
        self_id, leader = self._replica.id, self._replica.leader_id
        contact = self._last_contact() if self._last_contact is not None else {}
        now = time.monotonic()
        response = cluster_pb2.MembersResponse()
        for member_id, address in self._members.items():
            member = response.members.add(
                id=member_id, grpc_address=address, is_leader=member_id == leader, is_self=member_id == self_id
            )
            if member_id != self_id and member_id in contact:
                member.last_contact_seconds = max(0.0, now - contact[member_id])
        return response

    @rpc
    async def Leader(self, request: cluster_pb2.LeaderRequest, context: Context) -> cluster_pb2.LeaderResponse:
        leader = self._replica.leader_id
        if not leader:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._replica.id} knows no leader (an election is under way, or it is cut off "
                "from a majority): retry shortly, or ask another node",
            )
        return cluster_pb2.LeaderResponse(leader_id=leader, grpc_address=self._members.get(leader, ""))


def add_cluster_service(
    server: grpc.aio.Server,
    ctx: ServiceContext,
    members: Mapping[str, str],
    last_contact: LastContact | None = None,
) -> str:
    """Serve the ClusterService on `server`; returns its full name (for reflection and health)."""
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterServicer(ctx, members, last_contact), server)
    return cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name
