"""Drives a QueueMachine as the router would: increasing log indexes, time moved by
`advance`, events collected.  Shared by the queue's rule tests and its property test."""

from __future__ import annotations

import json

from google.protobuf import json_format, struct_pb2

from dsync.fsm.v1 import queue_pb2
from dsync.v1 import queue_pb2 as api
from server.fsm.base import ApplyContext, Result
from server.fsm.protocols import restore
from server.fsm.queue import QueueMachine


def entry(payload: bytes = b"x", id: str = "", delay_ms: int = 0, max_deliveries: int = 0) -> queue_pb2.QueueMessage:
    return queue_pb2.QueueMessage(raw=payload, id=id, delay_ms=delay_ms, max_deliveries=max_deliveries)


def json_entry(value: object, id: str = "") -> queue_pb2.QueueMessage:
    serialized = json_format.Parse(json.dumps(value), struct_pb2.Value()).SerializeToString(deterministic=True)
    return queue_pb2.QueueMessage(json=serialized, id=id)


def settle(topic: str, id: str, receipt: int = 0) -> queue_pb2.QueueSettle:
    return queue_pb2.QueueSettle(topic=topic, id=id, receipt=receipt)


class Driver:
    def __init__(self, machine: QueueMachine | None = None, index: int = 0, now_ms: int = 0) -> None:
        self.machine = machine if machine is not None else QueueMachine()
        self.index = index
        self.now_ms = now_ms
        self.events: list[object] = []

    def _ctx(self) -> ApplyContext:
        self.index += 1
        return ApplyContext(self.index, self.now_ms, self.events.append)

    def apply(self, command: queue_pb2.QueueCommand) -> Result:
        return self.machine.apply(command.SerializeToString(), self._ctx())

    def tick(self, ms: int) -> None:
        """A Clock entry moving time on by `ms`."""
        self.now_ms += ms
        self.machine.advance(self._ctx())

    def copy(self) -> Driver:
        """A replica restored from this one's snapshot, at the same log position and time."""
        machine = QueueMachine()
        restore(machine, self.machine.snapshot())
        return Driver(machine, self.index, self.now_ms)

    # Shorthands that expect success.

    def publish(self, topic: str, *entries: queue_pb2.QueueMessage) -> list[api.PublishResponse]:
        result = self.apply(queue_pb2.QueueCommand(publish=queue_pb2.QueuePublish(topic=topic, messages=entries)))
        assert isinstance(result, api.PublishBatchResponse), result
        return list(result.results)

    def consume(
        self, topic: str, max_messages: int = 1, visibility_ms: int = 0, consumer: str = "c1"
    ) -> list[api.Delivery]:
        result = self.apply(
            queue_pb2.QueueCommand(
                consume=queue_pb2.QueueConsume(
                    topic=topic, consumer=consumer, max_messages=max_messages, visibility_timeout_ms=visibility_ms
                )
            )
        )
        assert isinstance(result, api.ConsumeResponse), result
        return list(result.messages)

    def ack(self, topic: str, id: str, receipt: int = 0) -> Result:
        return self.apply(queue_pb2.QueueCommand(ack=settle(topic, id, receipt)))

    def nack(self, topic: str, id: str, delay_ms: int = 0, receipt: int = 0) -> Result:
        nack = queue_pb2.QueueNack(message=settle(topic, id, receipt), delay_ms=delay_ms)
        return self.apply(queue_pb2.QueueCommand(nack=nack))

    def extend(self, topic: str, id: str, visibility_ms: int, receipt: int = 0) -> Result:
        return self.apply(
            queue_pb2.QueueCommand(
                extend=queue_pb2.QueueExtend(message=settle(topic, id, receipt), visibility_timeout_ms=visibility_ms)
            )
        )

    def stats(self, topic: str) -> api.StatsResponse:
        return self.machine.stats(topic, self.now_ms)
