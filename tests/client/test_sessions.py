"""A retried write stays answerable however many writes the rest of the client makes.

The server keeps each session's last SESSION_RESULTS results and refuses a sequence at
or below the highest one it dropped.  SessionNode scripts that rule (server/fsm/router.py)
behind a real gRPC server: a compare_and_set is applied, then its answer is lost until the
test lets it fail as a dead leader's would, while other calls of the same client commit
more writes than a session keeps; the retry must still get the first attempt's result.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from dsync.v1 import cache_pb2, cache_pb2_grpc, cluster_pb2, cluster_pb2_grpc, common_pb2
from dsync_client import AsyncClient, Client, OutcomeUnknown
from server.fsm.router import SESSION_RESULTS
from tests.client.scripted import UnscriptedCache, UnscriptedCluster
from tests.client.waiting import wait_until

LATER_WRITES = SESSION_RESULTS + 44
# The attempt whose answer is lost waits at most this long for the test to end it.
LOST_ANSWER_S = 30.0


@dataclass
class _Kept:
    results: OrderedDict[int, int] = field(default_factory=OrderedDict)
    forgotten_upto: int = 0


@dataclass
class SessionNode(UnscriptedCache, UnscriptedCluster):
    """Puts and compare_and_sets applied once per (client_id, sequence); the first attempt
    at key "cas" is applied but answered only with UNAVAILABLE, once `answer_lost` is set."""

    address: str = ""
    sessions: dict[str, _Kept] = field(default_factory=dict)
    applied: list[tuple[str, int, str]] = field(default_factory=list)
    cas_waiting: threading.Event = field(default_factory=threading.Event)
    answer_lost: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _apply_once(self, header: common_pb2.RequestHeader, key: str, context: grpc.ServicerContext) -> int:
        with self._lock:
            kept = self.sessions.setdefault(header.client_id, _Kept())
            if header.sequence in kept.results:
                return kept.results[header.sequence]
            if header.sequence <= kept.forgotten_upto:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"header.sequence {header.sequence} is at or below {kept.forgotten_upto}, whose outcome this "
                    f"client's session no longer keeps (it keeps {SESSION_RESULTS} results): send new writes "
                    "with new sequence numbers",
                )
            self.applied.append((header.client_id, header.sequence, key))
            version = kept.results[header.sequence] = len(self.applied)
            while len(kept.results) > SESSION_RESULTS:
                dropped, _ = kept.results.popitem(last=False)
                kept.forgotten_upto = max(kept.forgotten_upto, dropped)
            return version

    def Put(self, request: cache_pb2.PutRequest, context: grpc.ServicerContext) -> cache_pb2.PutResponse:
        return cache_pb2.PutResponse(version=self._apply_once(request.header, request.key, context))

    def CompareAndSet(
        self, request: cache_pb2.CompareAndSetRequest, context: grpc.ServicerContext
    ) -> cache_pb2.CompareAndSetResponse:
        version = self._apply_once(request.header, request.key, context)
        if not self.cas_waiting.is_set():
            self.cas_waiting.set()
            self.answer_lost.wait(LOST_ANSWER_S)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the leader stepped down before answering: retry")
        return cache_pb2.CompareAndSetResponse(version=version)


@pytest.fixture
def node() -> Iterator[SessionNode]:
    scripted = SessionNode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cache_pb2_grpc.add_CacheServiceServicer_to_server(scripted, server)
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(scripted, server)
    scripted.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield scripted
    scripted.answer_lost.set()
    server.stop(None)


def test_a_retry_gets_its_first_answer_after_other_threads_wrote_more_than_a_session_keeps(
    node: SessionNode,
) -> None:
    with Client([node.address], timeout=LOST_ANSWER_S) as client:
        outcome: list[int | BaseException] = []

        def compare_and_set() -> None:
            try:
                outcome.append(client.cache.compare_and_set("cas", 1, expected_version=0))
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=compare_and_set)
        waiter.start()
        wait_until(node.cas_waiting.is_set, 10, "the compare_and_set to be applied")
        for n in range(LATER_WRITES):
            client.cache.put(f"k{n}", n)
        node.answer_lost.set()
        waiter.join(LOST_ANSWER_S)
    cas = [entry for entry in node.applied if entry[2] == "cas"]
    assert outcome == [node.applied.index(cas[0]) + 1], "the retry is answered with the first attempt's version"
    assert len(cas) == 1


async def test_an_async_retry_gets_its_first_answer_after_other_tasks_wrote_more_than_a_session_keeps(
    node: SessionNode,
) -> None:
    async with AsyncClient([node.address], timeout=LOST_ANSWER_S) as client:
        cas = asyncio.create_task(client.cache.compare_and_set("cas", 1, expected_version=0))
        deadline = asyncio.get_running_loop().time() + 10
        while not node.cas_waiting.is_set():
            assert asyncio.get_running_loop().time() < deadline, "the compare_and_set was never applied"
            await asyncio.sleep(0.02)
        for n in range(LATER_WRITES):
            await client.cache.put(f"k{n}", n)
        node.answer_lost.set()
        version = await cas
    applied = [entry for entry in node.applied if entry[2] == "cas"]
    assert len(applied) == 1 and version == node.applied.index(applied[0]) + 1


def test_a_retry_whose_outcome_the_server_forgot_is_reported_as_unknown(node: SessionNode) -> None:
    """Whatever the SDK does, a server that no longer knows must not be read as a refusal."""
    with Client([node.address], timeout=LOST_ANSWER_S) as client:
        node.sessions[client.client_id] = _Kept(forgotten_upto=10)  # as after a forgotten session
        with pytest.raises(OutcomeUnknown, match="may or may not have taken effect"):
            client.cache.compare_and_set("other", 1, expected_version=0)
