"""dsync.v1.QueueService: thin adapters from RPCs to queue commands in the log.

Writes go through `execute` (propose and wait).  Consume is the one that waits longer:
a long poll.  The state machine keeps no waiters; instead, the servicer registers for
the topic's `MessagesReady` event *before* each look at the state, so a message that
becomes ready at any moment after that look wakes it, and then it consumes again.  The
look itself is free when the local replica shows ready messages; otherwise a read
barrier confirms the topic is really empty before waiting, so an idle long poll writes
at most one entry to the log however long it waits (none without a request header).

One publish wakes every poll waiting on its topic, and each proposing a Consume would
cost a log entry per poll for one message.  So a poll proposes only for ready messages
that this node's Consumes in flight have not claimed (`_Claims`); the others wait for
those to be applied and look again, in the order they began waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import grpc

from dsync.fsm.v1 import queue_pb2
from dsync.v1 import common_pb2, queue_pb2_grpc
from dsync.v1 import queue_pb2 as api
from server.api import queue_requests as requests
from server.api.commands import execute
from server.api.context import ServiceContext
from server.api.errors import rpc
from server.fsm.queue import QueueMachine, ready_key

Context = grpc.aio.ServicerContext[Any, Any]
_NO_HEADER = common_pb2.RequestHeader()
# Seconds kept from a long poll's wait, out of the client's deadline, to send the answer.
_ANSWER_MARGIN = 0.2
# How long a woken poll leaves ready messages to the claims of this node's Consumes in
# flight before it proposes one of its own: a claim's Consume normally ends within a
# commit, far sooner.
CLAIM_PATIENCE_S = 0.25


class QueueServicer(queue_pb2_grpc.QueueServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        queue = ctx.machine.components.get("queue")
        if not isinstance(queue, QueueMachine):
            raise ValueError("the node's state machine has no QueueMachine under 'queue': add one before the service")
        self._ctx = ctx
        self._queue = queue
        self._claims = _Claims()

    @rpc
    async def Publish(self, request: api.PublishRequest, context: Context) -> api.PublishResponse:
        batch = await execute(
            self._ctx.replica, "queue", requests.publish(request), request.header, api.PublishBatchResponse
        )
        return batch.results[0]

    @rpc
    async def PublishBatch(self, request: api.PublishBatchRequest, context: Context) -> api.PublishBatchResponse:
        command = requests.publish_batch(request)
        return await execute(self._ctx.replica, "queue", command, request.header, api.PublishBatchResponse)

    @rpc
    async def Consume(self, request: api.ConsumeRequest, context: Context) -> api.ConsumeResponse:
        command, wait = requests.consume(request)
        budget = context.time_remaining()
        if budget is not None:  # answer (empty) before the client's deadline rather than miss it
            wait = min(wait, max(0.0, budget - _ANSWER_MARGIN))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        topic = request.topic
        take = _Take(topic, command.consume.max_messages or 1, command)
        header = request.header
        while True:
            with self._ctx.hub.expect(ready_key(topic)) as ready:
                if header.client_id:
                    # A call with a header always proposes once: it may be a retry, answered
                    # from the session the router keeps, whatever the topic holds now.
                    response = await self._take(take, header)
                    # Later attempts are new writes: the header already stands for this one's
                    # (empty) answer, which is what a retry of the whole call gets.
                    header = _NO_HEADER
                else:
                    response = await self._look(take, deadline)
                remaining = deadline - loop.time()
                if response.messages or remaining <= 0:
                    return response
                if await ready.wait(remaining) is None:
                    break
        # A wake-up missed for any reason would otherwise cost the whole wait and an empty
        # answer with a message in plain sight: look at this replica once more.
        if self._queue.ready_count(topic):
            return await self._take(take, _NO_HEADER)
        return api.ConsumeResponse()

    @rpc
    async def Ack(self, request: api.AckRequest, context: Context) -> api.AckResponse:
        return await execute(self._ctx.replica, "queue", requests.ack(request), request.header, api.AckResponse)

    @rpc
    async def Nack(self, request: api.NackRequest, context: Context) -> api.NackResponse:
        return await execute(self._ctx.replica, "queue", requests.nack(request), request.header, api.NackResponse)

    @rpc
    async def ExtendVisibility(
        self, request: api.ExtendVisibilityRequest, context: Context
    ) -> api.ExtendVisibilityResponse:
        command = requests.extend(request)
        return await execute(self._ctx.replica, "queue", command, request.header, api.ExtendVisibilityResponse)

    @rpc
    async def Stats(self, request: api.StatsRequest, context: Context) -> api.StatsResponse:
        requests.check_topic(request.topic)
        requests.check_consistency(request.consistency)
        if request.consistency != common_pb2.CONSISTENCY_LOCAL:
            await self._ctx.replica.read_barrier()
        return self._queue.stats(request.topic, self._ctx.machine.now_ms)

    async def _look(self, take: _Take, deadline: float) -> api.ConsumeResponse:
        """Consume if ready messages are left over for this poll; empty once the topic is
        confirmed empty by a read barrier, or once this node's Consumes in flight took
        what was ready.

        While time remains, a poll leaves the messages that this node's Consumes in flight
        have claimed to them, and looks again once one of those is applied or more
        messages arrive: one publish that wakes thirty polls then costs one Consume entry,
        not thirty.  A claim whose Consume takes longer than CLAIM_PATIENCE_S (its
        proposal lost with a leader, say) holds the poll back no longer.  With no time
        left it proposes whatever the claims say: its answer may come back empty, but it
        never leaves behind a message a claim did not take after all (a Consume answer
        stops at its byte budget).
        """
        loop = asyncio.get_running_loop()
        topic = take.topic
        confirmed = False
        patient = True
        while True:
            ready = self._queue.ready_count(topic)
            claimed = self._claims.held(topic)
            remaining = deadline - loop.time()
            if ready > claimed or (ready and (remaining <= 0 or not patient)):
                return await self._take(take, _NO_HEADER)
            if ready:
                # This node's own Consume, just applied here, stands for a fresh look:
                # no read barrier is needed afterwards.  More messages may arrive
                # meanwhile; and a claim whose Consume is slow (lost with a leader, say)
                # holds the others back only CLAIM_PATIENCE_S.
                with self._ctx.hub.expect(ready_key(topic)) as more:
                    patient = await self._claims.settled(topic, min(remaining, CLAIM_PATIENCE_S), more.future)
                confirmed = True
            elif confirmed:
                return api.ConsumeResponse()
            else:
                await self._ctx.replica.read_barrier()
                confirmed = True

    async def _take(self, take: _Take, header: common_pb2.RequestHeader) -> api.ConsumeResponse:
        with self._claims.claim(take.topic, take.limit):
            return await execute(self._ctx.replica, "queue", take.command, header, api.ConsumeResponse)


class _Take(NamedTuple):
    """What one Consume call proposes, and how many messages it may take."""

    topic: str
    limit: int
    command: queue_pb2.QueueCommand


class _Claims:
    """Per topic, how many messages this node's Consumes in flight may take.

    Waiters are woken in the order they began waiting (asyncio runs the callbacks of
    futures in the order their results are set), which keeps long polls roughly FIFO.
    """

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}

    def held(self, topic: str) -> int:
        return self._held.get(topic, 0)

    @contextmanager
    def claim(self, topic: str, count: int) -> Iterator[None]:
        """Hold a claim on `count` of `topic`'s ready messages while a Consume is in flight."""
        self._held[topic] = self.held(topic) + count
        try:
            yield
        finally:
            left = self._held[topic] - count
            if left:
                self._held[topic] = left
            else:
                del self._held[topic]
            for waiter in self._waiting.pop(topic, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def settled(self, topic: str, timeout: float, other: asyncio.Future[object]) -> bool:
        """Until one of `topic`'s claims ends or `other` is done (True), or `timeout`
        seconds pass (False)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(topic, [])
        waiting.append(waiter)
        try:
            done, _ = await asyncio.wait((waiter, other), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return bool(done)
        finally:
            waiting = self._waiting.get(topic, [])
            if waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiting[topic]


def add_queue_service(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    """Serve QueueService on `server`; returns its full name, for reflection and health."""
    queue_pb2_grpc.add_QueueServiceServicer_to_server(QueueServicer(ctx), server)
    return api.DESCRIPTOR.services_by_name["QueueService"].full_name
