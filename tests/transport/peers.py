"""Helpers for transport tests: real peer servers on ephemeral ports, messages, polling."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Collection

import grpc.aio

from server.raft.types import Entry, Message, MsgType, NodeId
from server.transport.peer_service import RaftPeerServicer, add_raft_service
from server.transport.wire import SERVER_OPTIONS


class PeerServer:
    """One node's Raft service on a real grpc.aio server; records every batch that arrives.

    It keeps its port and servicer across stop/start, so a test can restart the peer.
    """

    def __init__(
        self, node_id: NodeId, *, cluster: str = "", members: Collection[NodeId] | None = None, token: str = ""
    ) -> None:
        self.node_id = node_id
        self.received: list[Message] = []
        self.batches: list[list[Message]] = []
        self.servicer = RaftPeerServicer(self._inbox, node_id, cluster=cluster, members=members, token=token)
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        add_raft_service(server, self.servicer)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if port == 0:
            raise RuntimeError(f"could not bind 127.0.0.1:{self.port}")
        self.port = port
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def __aenter__(self) -> PeerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _inbox(self, batch: list[Message]) -> None:
        self.batches.append(batch)
        self.received.extend(batch)


def refused_address() -> str:
    """An address on which nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def append(i: int, src: NodeId = "a", dst: NodeId = "b", entries: int = 1) -> Message:
    return Message(
        MsgType.APPEND,
        src,
        dst,
        term=1,
        index=i,
        log_term=1,
        entries=[Entry(1, i + k + 1, b"x" * 16) for k in range(entries)],
        commit=i,
    )


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Polls `condition` until it holds; fails the test with TimeoutError after `timeout` s."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)
