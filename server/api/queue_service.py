"""dsync.v1.QueueService: thin adapters from RPCs to queue commands in the log.

Writes go through `execute` (propose and wait).  Consume is the one that waits longer:
a long poll.  The state machine keeps no waiters; instead, the servicer registers for
the topic's `MessagesReady` event *before* each look at the state, so a message that
becomes ready at any moment after that look wakes it, and then it consumes again.  The
look itself is free when the local replica shows ready messages; otherwise a read
barrier confirms the topic is really empty before waiting, so an idle long poll writes
at most one entry to the log however long it waits (none without a request header).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

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


class QueueServicer(queue_pb2_grpc.QueueServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        queue = ctx.machine.components.get("queue")
        if not isinstance(queue, QueueMachine):
            raise ValueError("the node's state machine has no QueueMachine under 'queue': add one before the service")
        self._ctx = ctx
        self._queue = queue

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
        header = request.header
        while True:
            with self._ctx.hub.expect(ready_key(request.topic)) as ready:
                # A call with a header always proposes once: it may be a retry, answered from
                # the session the router keeps, whatever the topic holds now.
                if header.client_id or await self._may_have_ready(request.topic):
                    response = await execute(self._ctx.replica, "queue", command, header, api.ConsumeResponse)
                    if response.messages:
                        return response
                    # Later attempts are new writes: the header already stands for this one's
                    # (empty) answer, which is what a retry of the whole call gets.
                    header = _NO_HEADER
                remaining = deadline - loop.time()
                if remaining <= 0 or await ready.wait(remaining) is None:
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

    async def _may_have_ready(self, topic: str) -> bool:
        """Whether consuming could deliver something; False only once confirmed by a read barrier."""
        if self._queue.ready_count(topic):
            return True
        await self._ctx.replica.read_barrier()
        return self._queue.ready_count(topic) > 0


def add_queue_service(server: grpc.aio.Server, ctx: ServiceContext) -> str:
    """Serve QueueService on `server`; returns its full name, for reflection and health."""
    queue_pb2_grpc.add_QueueServiceServicer_to_server(QueueServicer(ctx), server)
    return api.DESCRIPTOR.services_by_name["QueueService"].full_name
