"""What a node says when its replica stops: a Redis that is gone is told apart from one
that is up but refuses writes, since only the first is mended by restarting the node."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from server.node import why_the_replica_stopped

WHERE = "its Redis at redis://db:6379/0"


@pytest.mark.parametrize(
    "fault",
    [ConnectionError("Connection closed by server."), TimeoutError("Timeout reading"), BusyLoadingError("loading"),
     ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe")],
)  # fmt: skip
def test_a_redis_that_went_away_is_lost(fault: BaseException) -> None:
    said = why_the_replica_stopped(fault, WHERE)
    assert said.startswith(f"lost {WHERE} (") and said.endswith("restart the node once it answers again")


@pytest.mark.parametrize(
    "fault",
    [OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
     ReadOnlyError("You can't write against a read only replica."),
     ResponseError("MISCONF Errors writing to the AOF file"), AuthenticationError("invalid password")],
)  # fmt: skip
def test_a_redis_that_refuses_writes_is_named_as_refusing(fault: BaseException) -> None:
    said = why_the_replica_stopped(fault, WHERE)
    assert said.startswith(f"{WHERE} refused a write: {fault}; fix that Redis")


def test_any_other_fault_points_at_the_log() -> None:
    said = why_the_replica_stopped(ValueError("corrupt entry"), WHERE)
    assert said == "its replica stopped on a fault (ValueError('corrupt entry')); see the log above"
