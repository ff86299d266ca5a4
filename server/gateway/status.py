"""`GET /health` and `GET /raft/state`: what an operator or orchestrator asks a node.

Both answer from this node's own view, without asking anyone: they must work on a node
cut off from the others, which is when they are needed most.

The leader's HTTP address comes from configuration: a node knows its own, and a peer's
only if PEERS gives it (`node2=http://HOST:GRPC_PORT;http=http://HOST:HTTP_PORT`).
`null` means "not configured", never a guess -- a guessed port would send a client to
the wrong place with confidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from server.gateway.views import PeerLinkView, ReplicaView


@dataclass(frozen=True)
class Address:
    """Where a member serves: gRPC host:port, and its HTTP base URL when known."""

    grpc: str
    http: str | None


class NodeStatus:
    """`members`: every member's addresses, this node included; `last_contact`: peer ->
    time.monotonic() of its latest message to this node; `peer_links`: peer -> the
    stats of this node's link to it."""

    def __init__(
        self,
        replica: ReplicaView,
        members: Mapping[str, Address],
        last_contact: Callable[[], Mapping[str, float]],
        peer_links: Callable[[], Mapping[str, PeerLinkView]],
    ) -> None:
        self._replica = replica
        self._members = dict(sorted(members.items()))
        self._last_contact = last_contact
        self._peer_links = peer_links

    def health(self) -> tuple[bool, str]:
        """(serving, why): serving while the replica runs and a leader is known."""
        replica = self._replica
        stopped = replica.status().get("stopped")
        if stopped:
            return False, str(stopped)
        leader = replica.leader_id
        if not leader:
            return False, "no leader known: an election is under way or this node is cut off from a majority"
        return True, "leader" if leader == replica.id else f"following {leader}"

    def raft_state(self) -> dict[str, object]:
        replica = self._replica
        leader = replica.leader_id
        known = self._members.get(leader)
        now = time.monotonic()
        contact = self._last_contact()
        links = self._peer_links()
        me = replica.id
        members = []
        for name, address in self._members.items():
            link = links.get(name)
            members.append(
                {
                    "id": name,
                    "grpc": address.grpc,
                    "http": address.http,
                    "self": name == me,
                    "leader": name == leader,
                    "last_heard_s": _ago(now, contact.get(name)),
                    "last_sent_s": _ago(now, link.last_sent if link is not None else None),
                }
            )
        return {
            "node_id": me,
            "role": replica.role.name.lower(),
            "term": replica.term,
            "leader": leader,
            "leader_grpc": known.grpc if known is not None else "",
            "leader_http": known.http if known is not None else None,
            "commit_index": replica.commit_index,
            "applied_index": replica.applied_index,
            "members": members,
            "replica": replica.status(),
        }


def _ago(now: float, at: float | None) -> float | None:
    return None if at is None else round(max(0.0, now - at), 3)


def add_status_routes(app: web.Application, status: NodeStatus) -> None:
    async def get_health(request: web.Request) -> web.Response:
        serving, reason = status.health()
        return web.json_response(
            {"status": "ok" if serving else "unavailable", "reason": reason},
            status=200 if serving else 503,
        )

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(status.raft_state())

    app.router.add_get("/health", get_health)
    app.router.add_get("/raft/state", get_state)
