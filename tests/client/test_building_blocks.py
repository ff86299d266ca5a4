"""The client's pure parts: backoff and deadlines, endpoint rotation, error mapping, JSON
values, request headers."""

from __future__ import annotations

import asyncio
import random
import socket
import threading

import grpc
import pytest
from google.protobuf import struct_pb2

from dsync.v1 import common_pb2, lock_pb2
from dsync_client import Client, cache_ops, cluster_ops, errors, lock_ops, queue_ops
from dsync_client.cli_output import Exit, exit_code
from dsync_client.endpoints import SUSPECT_S, Endpoints, parse_endpoints
from dsync_client.lease import same_hold
from dsync_client.queue_ops import nack_delay
from dsync_client.retry import Attempts, RetryPolicy
from dsync_client.session import SessionPool
from dsync_client.values import from_value, to_value


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_is_jittered_within_its_upper_half_and_capped() -> None:
    clock = FakeClock()
    policy = RetryPolicy(timeout=1000, initial_backoff=0.1, max_backoff=1.0, multiplier=2)
    attempts = Attempts(policy, rng=random.Random(7), clock=clock)
    unavailable = errors.Unavailable("no leader", endpoint="a:1")
    pauses = [attempts.pause_after(unavailable) for _ in range(8)]
    uppers = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(upper / 2 <= pause <= upper for pause, upper in zip(pauses, uppers))


def test_a_refusal_is_reraised_and_time_running_out_ends_retries() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(timeout=1.0, initial_backoff=0.4, max_backoff=0.4), clock=clock)
    refusal = errors.NotFound("no message 'x'")
    with pytest.raises(errors.NotFound):
        attempts.pause_after(refusal)
    last = errors.DeadlineExceeded("attempt timed out", code=grpc.StatusCode.DEADLINE_EXCEEDED, endpoint="b:2")
    assert 0.2 <= attempts.pause_after(last) <= 0.4  # 1 s left: worth another try
    clock.now += 0.85  # 0.15 s left: less than any pause (0.2 to 0.4 s) would leave
    with pytest.raises(errors.DeadlineExceeded, match="gave up after 2 failed attempt.*from b:2: attempt timed out"):
        attempts.pause_after(last)


@pytest.mark.parametrize("name", ["timeout", "attempt_timeout", "initial_backoff", "max_backoff", "multiplier"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_a_retry_policy_refuses_what_is_not_a_finite_positive_number(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"RetryPolicy.{name} must be"):
        RetryPolicy(**{name: value})


def test_a_call_may_not_wait_for_a_time_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="must be finite seconds, not nan"):
        Attempts(RetryPolicy(), wait=float("nan"))


def test_a_lock_lease_must_be_a_finite_number_of_seconds() -> None:
    with Client(["127.0.0.1:1"]) as client:  # nothing is dialled
        for ttl in (float("nan"), float("inf"), 0.0):
            with pytest.raises(ValueError, match="ttl \\(the lease\\) must be a finite number of seconds"):
                client.lock("r", ttl=ttl)


def test_an_attempt_may_take_the_server_side_wait_plus_attempt_timeout_within_the_deadline() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(timeout=10, attempt_timeout=6), wait=20, clock=clock)
    assert attempts.attempt_timeout() == 26
    clock.now += 25
    assert attempts.attempt_timeout() == pytest.approx(5)


def test_endpoints_rotate_on_failure_and_distrust_a_leader_that_just_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr("dsync_client.endpoints.time.monotonic", clock)
    endpoints = Endpoints(["a:1", "b:2", "c:3"])
    assert endpoints.needs_check() and not endpoints.needs_check()
    endpoints.failed("a:1")
    assert endpoints.current() == "b:2" and endpoints.needs_check()
    endpoints.failed("a:1")  # a stale report about an endpoint no longer current moves nothing
    assert endpoints.current() == "b:2"
    assert not endpoints.leader_is("a:1"), "followers still name a dead leader for a moment"
    assert not endpoints.leader_is("z:9")
    clock.now += SUSPECT_S
    assert endpoints.leader_is("a:1") and endpoints.current() == "a:1"


def test_parse_endpoints_reads_the_environment_and_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSYNC_ENDPOINTS", "h1:1, h2:2,h1:1")
    assert parse_endpoints(None) == ["h1:1", "h2:2"]
    assert parse_endpoints(["http://h3:3"]) == ["h3:3"]
    monkeypatch.delenv("DSYNC_ENDPOINTS")
    assert parse_endpoints(None) == ["127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"]
    with pytest.raises(ValueError, match="'nohost' is not host:port"):
        parse_endpoints("nohost")
    with pytest.raises(ValueError, match="no endpoints"):
        parse_endpoints(" , ")


@pytest.mark.parametrize(
    ("code", "details", "refine", "expected"),
    [
        (grpc.StatusCode.ABORTED, "deadlock: a waits for b waits for a; ...", None, errors.Deadlock),
        (grpc.StatusCode.ABORTED, "'r' is held exclusively by a: retry later", None, errors.LockConflict),
        (grpc.StatusCode.FAILED_PRECONDITION, "a does not hold 'r'", errors.NotHeld, errors.NotHeld),
        (grpc.StatusCode.INVALID_ARGUMENT, "ttl: too long", errors.NotHeld, errors.InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full", None, errors.Overloaded),
        (grpc.StatusCode.UNAVAILABLE, "no leader", None, errors.Unavailable),
        (grpc.StatusCode.CANCELLED, "shutting down", None, errors.Unavailable),
        (grpc.StatusCode.INTERNAL, "boom", None, errors.DsyncError),
    ],
)
def test_statuses_map_to_exceptions(
    code: grpc.StatusCode, details: str, refine: type[errors.DsyncError] | None, expected: type[errors.DsyncError]
) -> None:
    error = errors.from_status(code, details, "a:1", refine)
    assert type(error) is expected and error.message == details and error.code is code and error.endpoint == "a:1"


@pytest.mark.parametrize("refine", [None, errors.NotHeld, errors.VersionMismatch])
def test_a_write_whose_result_the_session_forgot_has_an_unknown_outcome_not_a_refusal(
    refine: type[errors.DsyncError] | None,
) -> None:
    details = (
        "header.sequence 1 is at or below 45, whose outcome this client's session no longer keeps "
        "(it keeps 256 results): send new writes with new sequence numbers"
    )
    error = errors.from_status(grpc.StatusCode.FAILED_PRECONDITION, details, "a:1", refine)
    assert type(error) is errors.OutcomeUnknown and error.message.startswith("the write may or may not have")
    assert details in error.message and error.code is grpc.StatusCode.FAILED_PRECONDITION


def test_json_values_round_trip_and_whole_numbers_come_back_as_int() -> None:
    value = {"s": "x", "n": 3, "f": 2.5, "big": 2**60, "b": True, "z": None, "l": [1, [2, {"k": []}]]}
    back = from_value(struct_pb2.Value.FromString(to_value(value).SerializeToString()))
    assert back == {**value, "big": float(2**60)}
    assert isinstance(back, dict) and type(back["n"]) is int
    with pytest.raises(TypeError, match="set is not JSON"):
        to_value({"s": {1}})


def test_writes_in_flight_together_never_share_a_session_and_free_sessions_are_reused() -> None:
    pool = SessionPool()
    in_flight: dict[str, int] = {}
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def write() -> None:
        start.wait()
        for _ in range(200):
            with pool.header() as header:
                with lock:
                    assert header.client_id not in in_flight, "two writes in flight in one session"
                    in_flight[header.client_id] = header.sequence
                    seen.append((header.client_id, header.sequence))
                with lock:
                    del in_flight[header.client_id]

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1600, "a (client id, sequence) pair was used twice"
    sessions = {client_id for client_id, _ in seen}
    assert pool.client_id in sessions and len(sessions) <= 8, "more sessions than writes ever in flight"
    for client_id in sessions:
        numbers = [n for c, n in seen if c == client_id]
        assert numbers == list(range(1, len(numbers) + 1)), "each session numbers its writes 1, 2, 3..."
    with pool.header() as first, pool.header() as second:
        assert first.client_id != second.client_id
    with pytest.raises(ValueError, match="longer than 120 bytes"):
        SessionPool("x" * 121)
    with pytest.raises(ValueError, match="may not contain '#'"):
        SessionPool("foo#1")  # it would share the sessions of a client named foo


def test_a_client_on_a_host_whose_name_holds_the_session_mark_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "ci#runner-3")
    assert SessionPool().client_id.startswith("ci-runner-3-")


def test_a_refresh_answered_for_another_token_is_not_taken_as_the_blocks_renewal() -> None:
    renewal = lock_ops.Grant("r", "o", "exclusive", token=9, ttl=1.0, expires_in=1.0)
    assert same_hold(9, renewal) is renewal
    with pytest.raises(errors.DsyncError, match="token 9, not this block's 7"):
        same_hold(7, renewal)


def test_an_outcome_unknown_exits_6_like_an_unavailable_cluster() -> None:
    error = errors.OutcomeUnknown("header.sequence 3 is at or below 9, whose outcome this client's session no longer keeps")
    assert exit_code(error) is Exit.UNAVAILABLE and int(Exit.UNAVAILABLE) == 6


async def test_tasks_in_flight_together_use_sessions_of_their_own() -> None:
    pool = SessionPool()
    entered = asyncio.Event()
    holding: list[str] = []

    async def write(wait: bool) -> None:
        with pool.header() as header:
            holding.append(header.client_id)
            if wait:
                entered.set()
                await asyncio.sleep(0.05)
            else:
                await entered.wait()

    await asyncio.gather(write(True), write(False))
    assert sorted(holding) == sorted([pool.client_id, f"{pool.client_id}#1"])
    with pool.header() as header:
        assert header.client_id in holding and header.sequence == 2, "a free session is lent again"


def test_writes_are_the_operations_that_carry_a_header() -> None:
    header = common_pb2.RequestHeader(client_id="c", sequence=3)
    acquire = lock_ops.acquire("r", "o", "exclusive", 0, 0)
    stamped, unstamped = acquire.stamped(header).request, acquire.request
    assert isinstance(stamped, lock_pb2.AcquireRequest) and isinstance(unstamped, lock_pb2.AcquireRequest)
    assert acquire.write and stamped.header == header and stamped.resource == "r"
    assert not unstamped.HasField("header"), "stamping copies the request"
    assert cache_ops.put("k", 1, 0).write and queue_ops.stats("t", "local").write is False
    assert not cache_ops.get("k", "linearizable").write and not cluster_ops.leader().write


def test_a_failing_message_backs_off_doubling_up_to_its_cap() -> None:
    assert [nack_delay(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert nack_delay(30, 10.0, 10_000.0) == 900.0  # the server's limit
