"""The lock machine, driven directly as the router would: every rule of the issue, then
random operation sequences checked against a reference model (tests/fsm/lock_model.py)
with a copy restored from a snapshot at random points running alongside."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from google.protobuf.message import Message as ProtoMessage

from dsync.fsm.v1 import command_pb2
from dsync.fsm.v1 import lock_pb2 as fsm_lock_pb2
from dsync.v1 import lock_pb2
from server.fsm import lock as lock_module
from server.fsm.base import ApplyContext, Code, Refusal, Result
from server.fsm.lock import LockGranted, LockMachine, LockWaitEnded, wait_key
from server.fsm.lock_graph import Edge, Edges, find_cycle
from server.fsm.lock_rules import DEFAULT_TTL_MS, MAX_OWNERS_PER_LOCK, MAX_TIMEOUT_MS, MAX_TTL_MS
from server.fsm.lock_state import Mode
from server.fsm.protocols import restore
from server.fsm.router import DsyncStateMachine
from tests.fsm.lock_model import Model, Outcome

X, S = Mode.EXCLUSIVE, Mode.SHARED
Command = fsm_lock_pb2.LockCommand


def acquire(resource: str, owner: str, mode: Mode = X, timeout_ms: int = 0, ttl_ms: int = 0) -> Command:
    op = Command.Acquire(resource=resource, owner=owner, mode=mode.wire, timeout_ms=timeout_ms, ttl_ms=ttl_ms)
    return Command(acquire=op)


def release(resource: str, owner: str) -> Command:
    return Command(release=Command.Release(resource=resource, owner=owner))


def refresh(resource: str, owner: str, ttl_ms: int = 0) -> Command:
    return Command(refresh=Command.Refresh(resource=resource, owner=owner, ttl_ms=ttl_ms))


def withdraw(resource: str, owner: str, wait_id: int, mode: Mode = X) -> Command:
    return Command(withdraw=Command.Withdraw(resource=resource, owner=owner, mode=mode.wire, wait_id=wait_id))


@dataclass
class Log:
    """Feeds a machine as the router would: one index per entry, time moved by clock entries."""

    machine: LockMachine = field(default_factory=LockMachine)
    index: int = 0
    now_ms: int = 0
    events: list[object] = field(default_factory=list)

    def run(self, command: Command) -> Result:
        return self.raw(command.SerializeToString())

    def raw(self, data: bytes) -> Result:
        self.index += 1
        return self.machine.apply(data, ApplyContext(self.index, self.now_ms, self.events.append))

    def tick(self, ms: int) -> None:
        self.index += 1
        self.now_ms += ms
        self.machine.advance(ApplyContext(self.index, self.now_ms, self.events.append))

    def grant(self, command: Command) -> lock_pb2.AcquireResponse:
        result = self.run(command)
        assert isinstance(result, fsm_lock_pb2.LockAcquireOutcome) and result.HasField("granted"), result
        return result.granted

    def queued(self, command: Command) -> int:
        return self.wait(command).ahead

    def wait(self, command: Command) -> fsm_lock_pb2.LockAcquireOutcome.Queued:
        result = self.run(command)
        assert isinstance(result, fsm_lock_pb2.LockAcquireOutcome) and result.HasField("queued"), result
        return result.queued

    def refused(self, command: Command, code: Code) -> str:
        result = self.run(command)
        assert isinstance(result, Refusal) and result.code is code, result
        return result.message

    def info(self, resource: str) -> lock_pb2.LockInfo:
        return self.machine.describe(resource, self.now_ms)

    def holders(self, resource: str) -> list[str]:
        return [h.owner for h in self.info(resource).holders]

    def waiters(self, resource: str) -> list[str]:
        return [w.owner for w in self.info(resource).waiters]

    def take_events(self) -> list[object]:
        events, self.events = self.events, []
        return events


# ---------------------------------------------------------------------- exclusivity and sharing


def test_an_exclusive_lock_excludes_everyone_and_a_conflict_without_timeout_fails_at_once() -> None:
    log = Log()
    granted = log.grant(acquire("r1", "alice", ttl_ms=10_000))
    assert (granted.owner, granted.mode, granted.fencing_token) == ("alice", lock_pb2.LOCK_MODE_EXCLUSIVE, 1)
    assert granted.ttl_seconds == granted.expires_in_seconds == 10.0
    message = log.refused(acquire("r1", "bob"), Code.ABORTED)
    assert "'r1' is held exclusively by alice (token 1" in message and "pass a timeout" in message
    log.refused(acquire("r1", "carol", S), Code.ABORTED)
    assert log.holders("r1") == ["alice"] and log.waiters("r1") == []


def test_shared_holders_coexist_and_exclude_an_exclusive_request() -> None:
    log = Log()
    a = log.grant(acquire("r2", "u1", S))
    b = log.grant(acquire("r2", "u2", S))
    assert a.mode == b.mode == lock_pb2.LOCK_MODE_SHARED and b.fencing_token > a.fencing_token
    assert "held shared by u1" in log.refused(acquire("r2", "w"), Code.ABORTED)
    info = log.info("r2")
    assert info.mode == lock_pb2.LOCK_MODE_SHARED and [h.owner for h in info.holders] == ["u1", "u2"]


def test_unspecified_mode_means_exclusive() -> None:
    log = Log()
    op = Command(acquire=Command.Acquire(resource="r", owner="a"))
    assert log.grant(op).mode == lock_pb2.LOCK_MODE_EXCLUSIVE


# ---------------------------------------------------------------------- waiting


def test_waiters_are_granted_in_fifo_order_and_a_shared_request_waits_behind_an_exclusive_one() -> None:
    log = Log()
    log.grant(acquire("r", "reader1", S))
    assert log.queued(acquire("r", "writer", X, timeout_ms=5_000)) == 0
    # The lock is shared, but a writer waits: a new reader queues behind it (no writer starvation).
    assert log.queued(acquire("r", "reader2", S, timeout_ms=5_000)) == 1
    assert log.queued(acquire("r", "reader3", S, timeout_ms=5_000)) == 2
    log.run(release("r", "reader1"))
    [event] = log.take_events()
    assert isinstance(event, LockGranted) and event.key == wait_key("r", "writer")
    assert event.response.fencing_token == 2 and log.holders("r") == ["writer"]
    log.run(release("r", "writer"))
    events = log.take_events()
    assert [e.key for e in events if isinstance(e, LockGranted)] == [wait_key("r", "reader2"), wait_key("r", "reader3")]
    assert log.holders("r") == ["reader2", "reader3"] and log.waiters("r") == []


def test_a_wait_times_out_at_its_deadline_names_the_holder_and_leaves_no_trace() -> None:
    log = Log()
    log.grant(acquire("r", "alice", ttl_ms=60_000))
    log.queued(acquire("r", "bob", timeout_ms=2_000))
    log.tick(10)  # the wait's time starts at the first clock entry after it
    log.tick(1_999)
    assert log.take_events() == [] and log.waiters("r") == ["bob"]
    log.tick(1)
    [event] = log.take_events()
    assert isinstance(event, LockWaitEnded) and event.key == wait_key("r", "bob")
    assert "timed out waiting for 'r'" in event.message and "held exclusively by alice" in event.message
    assert log.waiters("r") == [] and not log.machine.waits("r", "bob")


def test_a_timed_out_exclusive_waiter_lets_the_shared_requests_behind_it_in() -> None:
    log = Log()
    log.grant(acquire("r", "reader1", S))
    log.queued(acquire("r", "writer", X, timeout_ms=1_000))
    log.queued(acquire("r", "reader2", S, timeout_ms=5_000))
    log.tick(1)
    log.tick(1_000)
    ended, granted = log.take_events()
    assert isinstance(ended, LockWaitEnded) and isinstance(granted, LockGranted)
    assert granted.key == wait_key("r", "reader2") and log.holders("r") == ["reader1", "reader2"]


def test_a_lease_ending_as_a_wait_times_out_grants_the_waiter() -> None:
    log = Log()
    log.grant(acquire("r", "alice", ttl_ms=1_000))
    log.queued(acquire("r", "bob", timeout_ms=1_000))
    log.tick(1)
    log.tick(1_000)
    [event] = log.take_events()
    assert isinstance(event, LockGranted) and log.holders("r") == ["bob"]


def test_asking_again_while_waiting_joins_the_same_wait() -> None:
    log = Log()
    log.grant(acquire("r", "a"))
    log.queued(acquire("r", "b", timeout_ms=1_000))
    log.queued(acquire("r", "c", timeout_ms=1_000))
    assert log.queued(acquire("r", "c", timeout_ms=9_000)) == 1
    assert "c's earlier request still waits" in log.refused(acquire("r", "c"), Code.ABORTED)
    assert "already waits for 'r' in exclusive mode" in log.refused(
        acquire("r", "c", S, timeout_ms=1_000), Code.FAILED_PRECONDITION
    )
    assert log.waiters("r") == ["b", "c"]


# ---------------------------------------------------------------------- fencing tokens


def test_tokens_grow_with_every_grant_and_a_same_mode_reacquire_is_idempotent() -> None:
    log = Log()
    first = log.grant(acquire("r", "a", ttl_ms=1_000))
    log.tick(400)
    again = log.grant(acquire("r", "a", ttl_ms=2_000))  # same token, lease renewed with the new ttl
    assert again.fencing_token == first.fencing_token and again.expires_in_seconds == 2.0
    assert log.grant(acquire("r", "a", S)).mode == lock_pb2.LOCK_MODE_EXCLUSIVE  # exclusive gives shared
    log.run(release("r", "a"))
    assert log.grant(acquire("r", "a")).fencing_token == first.fencing_token + 1
    assert log.grant(acquire("other", "a")).fencing_token == first.fencing_token + 2


def test_validate_holds_only_for_the_current_grant() -> None:
    log = Log()
    token = log.grant(acquire("r", "a", ttl_ms=5_000)).fencing_token
    valid = log.machine.validate("r", "a", token, log.now_ms)
    assert valid.valid and valid.mode == lock_pb2.LOCK_MODE_EXCLUSIVE and valid.expires_in_seconds == 5.0
    assert not log.machine.validate("r", "a", token + 1, log.now_ms).valid
    assert not log.machine.validate("r", "b", token, log.now_ms).valid
    log.run(release("r", "a"))
    log.grant(acquire("r", "a"))
    assert log.machine.validate("r", "a", token, log.now_ms) == lock_pb2.ValidateResponse(valid=False)


# ---------------------------------------------------------------------- upgrades


def test_the_only_shared_holder_upgrades_at_once_with_a_new_token() -> None:
    log = Log()
    shared = log.grant(acquire("r", "a", S))
    upgraded = log.grant(acquire("r", "a", X))
    assert upgraded.mode == lock_pb2.LOCK_MODE_EXCLUSIVE and upgraded.fencing_token > shared.fencing_token
    assert not log.machine.validate("r", "a", shared.fencing_token, log.now_ms).valid


def test_an_upgrade_beside_other_holders_fails_at_once_or_waits_at_the_front_keeping_its_hold() -> None:
    log = Log()
    log.grant(acquire("r", "a", S))
    log.grant(acquire("r", "b", S))
    assert "held shared by a" in log.refused(acquire("r", "a", X), Code.ABORTED)
    log.grant(acquire("x", "w"))  # unrelated
    log.grant(acquire("r2", "c"))
    log.queued(acquire("r", "c", X, timeout_ms=9_000))  # an ordinary writer, queued first
    assert log.queued(acquire("r", "a", X, timeout_ms=9_000)) == 0  # the upgrade goes in front of it
    info = log.info("r")
    assert [(w.owner, w.upgrade) for w in info.waiters] == [("a", True), ("c", False)]
    assert [h.owner for h in info.holders] == ["a", "b"]  # a still holds shared meanwhile
    log.run(release("r", "b"))
    [event] = log.take_events()
    assert isinstance(event, LockGranted) and event.key == wait_key("r", "a")
    assert event.response.mode == lock_pb2.LOCK_MODE_EXCLUSIVE and log.waiters("r") == ["c"]


def test_two_holders_upgrading_at_once_is_a_deadlock_for_the_second() -> None:
    log = Log()
    log.grant(acquire("r", "a", S))
    log.grant(acquire("r", "b", S))
    log.queued(acquire("r", "a", X, timeout_ms=5_000))
    message = log.refused(acquire("r", "b", X, timeout_ms=5_000), Code.ABORTED)
    assert message.startswith("deadlock: b waits for r held by a, a waits for r held by b")


def test_an_upgrade_wait_ends_when_its_shared_hold_does() -> None:
    log = Log()
    log.grant(acquire("r", "a", S, ttl_ms=1_000))
    log.grant(acquire("r", "b", S, ttl_ms=60_000))
    log.queued(acquire("r", "a", X, timeout_ms=5_000))
    log.tick(1)
    log.tick(1_000)  # a's lease expires: it holds nothing to upgrade any more
    [event] = log.take_events()
    assert isinstance(event, LockWaitEnded) and "its lease expired" in event.message
    assert log.holders("r") == ["b"] and log.waiters("r") == []


def test_an_upgrade_that_times_out_still_holds_shared() -> None:
    log = Log()
    log.grant(acquire("r", "a", S, ttl_ms=60_000))
    log.grant(acquire("r", "b", S, ttl_ms=60_000))
    log.queued(acquire("r", "a", X, timeout_ms=1_000))
    log.tick(1)
    log.tick(1_000)
    assert isinstance(log.take_events()[0], LockWaitEnded)
    assert log.holders("r") == ["a", "b"] and log.info("r").mode == lock_pb2.LOCK_MODE_SHARED


# ---------------------------------------------------------------------- leases


def test_a_lease_expires_ttl_after_the_last_refresh_and_the_waiter_advances() -> None:
    log = Log()
    log.grant(acquire("r", "a", ttl_ms=1_000))
    log.queued(acquire("r", "b", timeout_ms=10_000, ttl_ms=3_000))
    log.tick(1)
    log.tick(900)
    refreshed = log.run(refresh("r", "a"))
    assert isinstance(refreshed, lock_pb2.RefreshResponse) and refreshed.expires_in_seconds == 1.0
    log.tick(1)  # the renewed lease counts from here
    log.tick(999)
    assert log.holders("r") == ["a"]
    log.tick(1)
    [event] = log.take_events()
    assert isinstance(event, LockGranted) and event.response.expires_in_seconds == 3.0
    assert log.holders("r") == ["b"]


def test_a_lease_counts_from_the_clock_entry_after_its_grant_never_from_an_older_reading() -> None:
    """State-machine time is the last clock reading, possibly older than the request
    itself: a lease counted from it could end before the client's sent-time + ttl."""
    log = Log()
    log.tick(5_000)  # the last reading; the request comes in somewhat later, before the next one
    granted = log.grant(acquire("r", "a", ttl_ms=1_000))
    assert granted.expires_in_seconds == 1.0
    log.tick(100)  # the next reading: the lease runs from here
    log.tick(999)
    assert log.holders("r") == ["a"]
    log.tick(1)
    assert log.holders("r") == []


def test_refresh_can_change_the_ttl_and_keeps_the_token() -> None:
    log = Log()
    token = log.grant(acquire("r", "a", ttl_ms=1_000)).fencing_token
    refreshed = log.run(refresh("r", "a", ttl_ms=5_000))
    assert isinstance(refreshed, lock_pb2.RefreshResponse)
    assert (refreshed.fencing_token, refreshed.ttl_seconds) == (token, 5.0)
    log.tick(4_999)
    assert log.holders("r") == ["a"]


def test_default_ttl_applies_when_none_is_given() -> None:
    log = Log()
    assert log.grant(acquire("r", "a")).ttl_seconds == DEFAULT_TTL_MS / 1000
    log.tick(1)
    log.tick(DEFAULT_TTL_MS - 1)
    assert log.holders("r") == ["a"]
    log.tick(1)
    assert log.info("r") == lock_pb2.LockInfo(resource="r")


def test_refresh_or_release_by_a_non_holder_fails_and_changes_nothing() -> None:
    log = Log()
    log.grant(acquire("r", "alice"))
    log.queued(acquire("r", "bob", timeout_ms=1_000))
    before = log.machine.snapshot()
    message = log.refused(release("r", "bob"), Code.FAILED_PRECONDITION)
    assert "bob does not hold 'r', which is held exclusively by alice" in message and "it waits for it" in message
    assert "free" in log.refused(release("nothing", "bob"), Code.FAILED_PRECONDITION)
    log.refused(refresh("r", "bob"), Code.FAILED_PRECONDITION)
    assert log.machine.snapshot() == before and log.take_events() == []


def test_release_answers_with_the_ended_token_and_frees_the_resource() -> None:
    log = Log()
    token = log.grant(acquire("r", "a")).fencing_token
    assert log.run(release("r", "a")) == lock_pb2.ReleaseResponse(resource="r", owner="a", fencing_token=token)
    assert log.machine.page("", "", 10, log.now_ms) == ([], "")


# ---------------------------------------------------------------------- deadlocks


def test_a_two_owner_deadlock_is_refused_naming_the_cycle_and_changing_nothing() -> None:
    log = Log()
    log.grant(acquire("r1", "alice"))
    log.grant(acquire("r2", "bob"))
    log.queued(acquire("r1", "bob", timeout_ms=5_000))
    before = log.machine.snapshot()
    message = log.refused(acquire("r2", "alice", timeout_ms=5_000), Code.ABORTED)
    assert message.startswith("deadlock: alice waits for r2 held by bob, bob waits for r1 held by alice;")
    assert log.machine.snapshot() == before


def test_a_deadlock_across_three_owners_and_a_queue_is_found() -> None:
    log = Log()
    log.grant(acquire("r1", "a"))
    log.grant(acquire("r2", "b"))
    log.grant(acquire("r3", "c", S))
    log.queued(acquire("r1", "b", timeout_ms=5_000))  # b waits for a
    log.queued(acquire("r3", "d", X, timeout_ms=5_000))  # d waits for c
    log.queued(acquire("r2", "c", timeout_ms=5_000))  # c waits for b
    # a asks r3 shared: compatible with c's shared hold, but queued behind d's exclusive request.
    message = log.refused(acquire("r3", "a", S, timeout_ms=5_000), Code.ABORTED)
    assert message.startswith(
        "deadlock: a waits for r3 behind d, d waits for r3 held by c, c waits for r2 held by b, "
        "b waits for r1 held by a;"
    )
    assert log.waiters("r3") == ["d"]


def test_waiting_without_a_cycle_is_not_a_deadlock() -> None:
    log = Log()
    log.grant(acquire("r1", "a"))
    log.queued(acquire("r1", "b", timeout_ms=5_000))
    log.queued(acquire("r1", "c", timeout_ms=5_000))
    log.grant(acquire("r2", "c2"))
    assert log.queued(acquire("r2", "a", timeout_ms=5_000)) == 0


@pytest.mark.parametrize("closer", ["s1", "s2", "s3"])
def test_an_exclusive_request_waits_for_every_member_of_the_shared_run_ahead_of_it(closer: str) -> None:
    """The graph names only the nearest group ahead of a request, yet must reach everyone
    it waits for: whichever member of the run waits for the requester closes a cycle."""
    log = Log()
    log.grant(acquire("r", "h"))
    log.grant(acquire("r2", "x"))
    for owner in ("s1", "s2", "s3"):
        log.queued(acquire("r", owner, S, timeout_ms=5_000))
    log.queued(acquire("r2", closer, timeout_ms=5_000))
    message = log.refused(acquire("r", "x", timeout_ms=5_000), Code.ABORTED)
    assert message.startswith(f"deadlock: x waits for r behind {closer}, {closer} waits for r2 held by x;")


def test_a_cycle_through_a_long_queue_is_told_in_a_few_steps() -> None:
    """The search steps down a queue one group at a time; the message does not."""
    log = Log()
    log.grant(acquire("r", "h"))
    for i in range(60):  # runs of two shared requests between exclusive ones
        log.queued(acquire("r", f"w{i}", X if i % 3 == 0 else S, timeout_ms=5_000))
    log.grant(acquire("r2", "x"))
    log.queued(acquire("r2", "h", timeout_ms=5_000))
    message = log.refused(acquire("r", "x", S, timeout_ms=5_000), Code.ABORTED)
    assert message.startswith(
        "deadlock: x waits for r behind w57, w57 waits for r held by h, h waits for r2 held by x;"
    )
    message = log.refused(acquire("r", "x", X, timeout_ms=5_000), Code.ABORTED)
    assert message.startswith("deadlock: x waits for r held by h, h waits for r2 held by x;")


def test_the_deadlock_search_behind_a_long_queue_does_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request queued checks for a deadlock through everyone it would wait for.  That
    must cost in proportion to them, not their square (an edge from each waiter to every
    one ahead once made one Acquire behind 998 waiters take 0.4 s on every replica)."""
    examined: list[int] = []

    def counting_find_cycle(first: list[Edge], edges: Edges) -> list[Edge] | None:
        def counted(owner: str) -> list[Edge]:
            found = edges(owner)
            examined.append(len(found))
            return found

        return find_cycle(first, counted)

    monkeypatch.setattr(lock_module, "find_cycle", counting_find_cycle)
    log = Log()
    log.grant(acquire("r", "h"))
    waiters = 300
    for i in range(waiters):  # runs of two shared requests between exclusive ones
        log.queued(acquire("r", f"w{i}", X if i % 3 == 0 else S, timeout_ms=5_000))
    examined.clear()
    log.queued(acquire("r", "last", X, timeout_ms=5_000))
    assert len(examined) == waiters + 1  # every waiter and the holder, once each
    assert sum(examined) <= 2 * waiters, sum(examined)


# ---------------------------------------------------------------------- withdraw (the servicer's safety net)


def test_withdraw_ends_a_wait_or_reports_a_grant() -> None:
    log = Log()
    log.grant(acquire("r", "a"))
    wait_id = log.wait(acquire("r", "b", timeout_ms=5_000)).wait_id
    message = log.refused(withdraw("r", "b", wait_id), Code.ABORTED)
    assert "held exclusively by a" in message and log.waiters("r") == []
    [event] = log.take_events()
    assert isinstance(event, LockWaitEnded) and event.message == message and event.wait_id == wait_id
    result = log.run(withdraw("r", "a", 1))
    assert isinstance(result, fsm_lock_pb2.LockAcquireOutcome) and result.granted.owner == "a"
    shared = log.run(withdraw("r", "a", 1, S))  # holding exclusively gives what shared asks
    assert isinstance(shared, fsm_lock_pb2.LockAcquireOutcome) and shared.granted.owner == "a"
    assert "acquire again" in log.refused(withdraw("r", "zed", 1), Code.ABORTED)
    log.refused(withdraw("gone", "zed", 1), Code.ABORTED)


def test_each_wait_has_its_own_id_and_withdraw_ends_only_the_wait_it_names() -> None:
    """The same owner's earlier wait may end while its next request is in flight: the id
    in the outcome, the events and Withdraw keeps the two apart."""
    log = Log()
    log.grant(acquire("r", "alice", ttl_ms=60_000))
    first = log.wait(acquire("r", "bob", timeout_ms=1_000))
    assert first.wait_id == log.index  # the log index of the entry that queued it
    assert log.wait(acquire("r", "bob", timeout_ms=5_000)) == first  # asking again joins the same wait
    log.tick(1)
    log.tick(1_000)
    [ended] = log.take_events()
    assert isinstance(ended, LockWaitEnded) and ended.wait_id == first.wait_id
    second = log.wait(acquire("r", "bob", timeout_ms=5_000))
    assert second.wait_id > first.wait_id and not log.machine.wait_queued("r", "bob", first.wait_id)
    assert "is over" in log.refused(withdraw("r", "bob", first.wait_id), Code.ABORTED)
    assert log.waiters("r") == ["bob"] and log.take_events() == []  # the later wait keeps its place
    assert log.machine.wait_queued("r", "bob", second.wait_id)
    log.run(release("r", "alice"))
    [granted] = log.take_events()
    assert isinstance(granted, LockGranted) and granted.wait_id == second.wait_id


# ---------------------------------------------------------------------- input and limits


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (acquire("", "a"), "resource"),
        (acquire("r", ""), "owner"),
        (acquire("r" * 257, "a"), "resource"),
        (acquire("r", "é" * 129), "owner"),  # 258 bytes of UTF-8
        (acquire("r\n", "a"), "resource"),
        (acquire("r", "a", timeout_ms=MAX_TIMEOUT_MS + 1), "timeout"),
        (acquire("r", "a", ttl_ms=MAX_TTL_MS + 1), "ttl"),
        (Command(acquire=Command.Acquire(resource="r", owner="a", mode=7)), "mode"),  # type: ignore[arg-type]
        (release("", "a"), "resource"),
        (refresh("r", "a", ttl_ms=MAX_TTL_MS + 1), "ttl"),
        (withdraw("r", "\x00", 1), "owner"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(command: Command, field: str) -> None:
    log = Log()
    assert log.refused(command, Code.INVALID_ARGUMENT).startswith(f"{field}: ")
    assert log.machine.snapshot() == b""


def test_undecodable_and_empty_commands_are_refused() -> None:
    log = Log()
    for data in (b"\xff\xff", Command().SerializeToString()):
        result = log.raw(data)
        assert isinstance(result, Refusal) and result.code is Code.INVALID_ARGUMENT


def test_names_up_to_the_limit_are_fine() -> None:
    log = Log()
    log.grant(acquire("r" * 256, "ü" * 128))


def test_a_resource_takes_at_most_the_limit_of_owners() -> None:
    log = Log()
    for i in range(MAX_OWNERS_PER_LOCK):
        log.grant(acquire("r", f"o{i}", S))
    assert "1000 owners" in log.refused(acquire("r", "one-more", S), Code.RESOURCE_EXHAUSTED)


# ---------------------------------------------------------------------- reads


def test_pages_list_locks_in_name_order_with_a_prefix() -> None:
    log = Log()
    for name in ("b/2", "a/1", "b/1", "b/3", "c"):
        log.grant(acquire(name, "o"))
    first, token = log.machine.page("b/", "", 2, log.now_ms)
    assert [i.resource for i in first] == ["b/1", "b/2"] and token == "b/2"
    rest, token = log.machine.page("b/", token, 2, log.now_ms)
    assert [i.resource for i in rest] == ["b/3"] and token == ""
    everything, token = log.machine.page("", "", 5, log.now_ms)
    assert [i.resource for i in everything] == ["a/1", "b/1", "b/2", "b/3", "c"] and token == ""


def test_get_lock_shows_holders_and_waiters_with_remaining_times() -> None:
    log = Log()
    log.grant(acquire("r", "a", S, ttl_ms=4_000))
    log.queued(acquire("r", "b", X, timeout_ms=3_000))
    log.tick(1)
    log.tick(1_000)
    info = log.info("r")
    assert info.mode == lock_pb2.LOCK_MODE_SHARED
    holders = [(h.owner, h.fencing_token, h.ttl_seconds, h.expires_in_seconds) for h in info.holders]
    assert holders == [("a", 1, 4.0, 3.0)]
    assert [(w.owner, w.mode, w.upgrade, w.expires_in_seconds) for w in info.waiters] == [
        ("b", lock_pb2.LOCK_MODE_EXCLUSIVE, False, 2.0)
    ]
    assert log.machine.holding("r", "a", S, log.now_ms) is not None
    assert log.machine.holding("r", "a", X, log.now_ms) is None


# ---------------------------------------------------------------------- snapshots and the router


def test_snapshot_restore_round_trips_exactly_and_behaves_the_same() -> None:
    log = Log()
    log.grant(acquire("r1", "a", S, ttl_ms=1_000))
    log.grant(acquire("r1", "b", S, ttl_ms=2_000))
    log.queued(acquire("r1", "a", X, timeout_ms=5_000))
    log.queued(acquire("r1", "c", X, timeout_ms=500))
    log.grant(acquire("r2", "c", ttl_ms=700))
    log.run(refresh("r2", "c", ttl_ms=800))  # leaves a stale timer behind in the original
    data = log.machine.snapshot()
    copy = Log(LockMachine(), log.index, log.now_ms)
    restore(copy.machine, data)
    assert copy.machine.snapshot() == data
    for step in (300, 300, 300, 300, 1_000):
        log.tick(step)
        copy.tick(step)
        assert copy.take_events() == log.take_events()
        assert copy.machine.snapshot() == log.machine.snapshot()


def test_a_corrupt_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="corrupt lock snapshot"):
        restore(LockMachine(), b"\xff\xff\xff")


@pytest.mark.parametrize("wait_ids", [(7, 0), (7, 7), (8, 7)])  # (7, 0): a legacy wait behind a later one
def test_a_snapshot_whose_queue_is_not_in_wait_id_order_is_refused(wait_ids: tuple[int, int]) -> None:
    """The machine finds requests in its queues by their order, which only wait ids give."""
    snap = fsm_lock_pb2.LockSnapshot(last_token=1)
    entry = snap.locks.add(resource="r", mode=lock_pb2.LOCK_MODE_EXCLUSIVE)
    entry.holders.add(owner="h", fencing_token=1, ttl_ms=1_000, expires_ms=1_000)
    for owner, wait_id in zip(("a", "b"), wait_ids, strict=True):
        entry.waiters.add(owner=owner, mode=lock_pb2.LOCK_MODE_EXCLUSIVE, timeout_ms=1, deadline_ms=1, wait_id=wait_id)
    with pytest.raises(ValueError, match="corrupt lock snapshot: 'r': waiter [ab] has wait id"):
        restore(LockMachine(), snap.SerializeToString())


def _without_wait_ids(snapshot: bytes) -> bytes:
    """The snapshot as the code before waits had ids wrote it."""
    snap = fsm_lock_pb2.LockSnapshot.FromString(snapshot)
    for entry in snap.locks:
        for w in entry.waiters:
            w.ClearField("wait_id")
    return snap.SerializeToString(deterministic=True)


@pytest.mark.parametrize("named", ["real id", "restored id"])
def test_a_wait_restored_without_an_id_behaves_as_on_a_replica_that_replayed_it(named: str) -> None:
    """One replica restores a snapshot of before waits had ids; another replayed the same
    entries and knows the wait's real index.  Whichever id a Withdraw or an RPC names, both
    must end or keep the same wait, and grant the same locks afterwards."""
    replayed = Log()
    replayed.grant(acquire("r", "h", ttl_ms=60_000))
    replayed.run(acquire("s", "x"))
    real_id = replayed.wait(acquire("r", "w", timeout_ms=60_000)).wait_id
    restored = Log(index=replayed.index, now_ms=replayed.now_ms)
    restore(restored.machine, _without_wait_ids(replayed.machine.snapshot()))
    assert restored.machine.snapshot() == _without_wait_ids(replayed.machine.snapshot())  # still without ids
    for log in (replayed, restored):
        assert log.machine.wait_queued("r", "w", real_id) and log.machine.wait_queued("r", "w", 0)
    # Asking again joins the wait; each replica names it as it knows it, and a Withdraw
    # from either names the same wait on both.
    rejoined = [log.wait(acquire("r", "w", timeout_ms=60_000)).wait_id for log in (replayed, restored)]
    assert rejoined == [real_id, 0]
    later = {id(log): log.wait(acquire("r", "v", timeout_ms=60_000)).wait_id for log in (replayed, restored)}
    assert len(set(later.values())) == 1 and real_id < next(iter(later.values()))  # queued behind, same id
    for log in (replayed, restored):
        log.refused(withdraw("r", "w", real_id if named == "real id" else 0), Code.ABORTED)
        log.run(release("r", "h"))
    assert replayed.holders("r") == restored.holders("r") == ["v"]


def _named(result: object) -> object:
    """A result or event with wait ids left out: the two replicas know legacy waits by
    different ids, and must agree on everything else."""
    if isinstance(result, fsm_lock_pb2.LockAcquireOutcome):
        copy = fsm_lock_pb2.LockAcquireOutcome()
        copy.CopyFrom(result)
        copy.queued.ClearField("wait_id")
        return copy.SerializeToString(deterministic=True)
    if isinstance(result, Refusal):
        return result.code, re.sub(r"\(wait \d+\)", "", result.message)
    if isinstance(result, LockGranted):
        return "granted", result.key, result.response.SerializeToString(deterministic=True)
    if isinstance(result, LockWaitEnded):
        return "ended", result.key, result.message
    return result.SerializeToString(deterministic=True) if isinstance(result, ProtoMessage) else result


@pytest.mark.parametrize("seed", range(40))
def test_replicas_that_restored_or_replayed_waits_of_before_ids_stay_identical(seed: int) -> None:
    """One replica replays history under this code; another restores a snapshot of it as
    the code before wait ids wrote it, and is itself snapshotted and restored now and then.
    Withdraws name a wait as either replica's servicer would (its Queued id, or 0)."""
    rng = random.Random(seed)
    replayed = Log()
    replicas = [replayed]

    def command() -> Command | int:
        resource, owner = rng.choice(("r0", "r1")), rng.choice("abcd")
        kind = rng.random()
        if kind < 0.45:
            mode = rng.choice((X, S))
            return acquire(resource, owner, mode, rng.choice((0, 300, 2_000, 10_000)), rng.choice((500, 3_000, 20_000)))
        if kind < 0.6:
            return release(resource, owner)
        if kind < 0.65:
            return refresh(resource, owner, rng.choice((0, 1_000)))
        if kind < 0.8:  # as either replica's servicer names the owner's wait
            lock = rng.choice(replicas).machine._locks.get(resource)
            waiter = lock.waiter(owner) if lock is not None else None
            wait_id = rng.choice((0, waiter.wait_id if waiter is not None else 1))
            return withdraw(resource, owner, wait_id, rng.choice((X, S)))
        return rng.choice((100, 400, 1_500))  # a tick

    for _ in range(40):
        step = command()
        replayed.tick(step) if isinstance(step, int) else replayed.run(step)
    restored = Log(index=replayed.index, now_ms=replayed.now_ms)
    restore(restored.machine, _without_wait_ids(replayed.machine.snapshot()))
    replicas.append(restored)
    replayed.take_events()
    for _ in range(120):
        step = command()
        if isinstance(step, int):
            replayed.tick(step)
            restored.tick(step)
        else:
            assert _named(replayed.run(step)) == _named(restored.run(step))
        assert [_named(e) for e in replayed.take_events()] == [_named(e) for e in restored.take_events()]
        assert _without_wait_ids(replayed.machine.snapshot()) == _without_wait_ids(restored.machine.snapshot())
        if rng.random() < 0.1:
            again = Log(index=restored.index, now_ms=restored.now_ms)
            restore(again.machine, restored.machine.snapshot())
            assert again.machine.snapshot() == restored.machine.snapshot()
            restored = replicas[1] = again


def test_a_snapshot_with_legacy_waits_and_later_ones_behind_them_restores() -> None:
    replayed = Log()
    replayed.grant(acquire("r", "h", ttl_ms=60_000))
    replayed.wait(acquire("r", "w", timeout_ms=60_000))
    restored = Log(index=replayed.index, now_ms=replayed.now_ms)
    restore(restored.machine, _without_wait_ids(replayed.machine.snapshot()))
    later = restored.wait(acquire("r", "v", timeout_ms=60_000)).wait_id
    again = Log(index=restored.index, now_ms=restored.now_ms)
    restore(again.machine, restored.machine.snapshot())  # w still without an id, v with its own
    assert again.machine.snapshot() == restored.machine.snapshot() and again.waiters("r") == ["w", "v"]
    assert again.machine.wait_queued("r", "v", later) and not again.machine.wait_queued("r", "v", later + 1)
    again.run(release("r", "h"))
    assert again.holders("r") == ["w"]


def test_a_withdraw_logged_before_waits_had_ids_ends_the_owners_wait() -> None:
    log = Log()
    log.grant(acquire("r", "a"))
    log.wait(acquire("r", "b", timeout_ms=5_000))
    assert "held exclusively by a" in log.refused(withdraw("r", "b", 0), Code.ABORTED)
    assert log.waiters("r") == []


def test_refreshing_in_a_loop_does_not_grow_the_timers_without_bound() -> None:
    log = Log()
    log.grant(acquire("r", "a", ttl_ms=MAX_TTL_MS))
    for _ in range(5_000):
        log.run(refresh("r", "a"))
        log.tick(1)  # the renewed lease starts: one more (soon stale) timer entry
    assert len(log.machine._timers) <= 2_048
    assert log.holders("r") == ["a"]


def test_a_leader_change_never_shortens_a_lease_whatever_the_new_leaders_clock_reads() -> None:
    locks = LockMachine()
    fsm = DsyncStateMachine({"lock": locks})
    entries = itertools.count(1)

    def apply(command: command_pb2.Command) -> None:
        fsm.apply(next(entries), command.SerializeToString())

    def clock(term: int, ms: int) -> None:
        apply(command_pb2.Command(clock=command_pb2.Clock(term=term, monotonic_ms=ms)))

    def held() -> bool:
        return bool(locks.describe("r", fsm.now_ms).holders)

    clock(1, 10_000)
    apply(command_pb2.Command(lock=acquire("r", "a", ttl_ms=1_000).SerializeToString()))
    clock(1, 10_100)  # the lease starts here: cluster time 100, expiry at 1100
    clock(1, 10_700)  # 400 ms left when the leader dies
    clock(2, 999_999)  # the new leader's clock reads anything: a new epoch, time stands still
    clock(2, 1_000_398)
    assert held() and fsm.now_ms == 1_099
    clock(2, 1_000_399)
    assert not held()


def test_results_survive_the_routers_session_cache() -> None:
    """Retries are answered from the session, even after a restore: every lock result
    must be a protobuf message the router can pack and unpack."""
    locks, copied = LockMachine(), LockMachine()
    fsm, copy = DsyncStateMachine({"lock": locks}), DsyncStateMachine({"lock": copied})

    def envelope(command: Command, seq: int) -> bytes:
        return command_pb2.Command(client_id="c", sequence=seq, lock=command.SerializeToString()).SerializeToString()

    first = fsm.apply(1, envelope(acquire("r", "a"), 1))
    assert isinstance(first, fsm_lock_pb2.LockAcquireOutcome) and first.granted.fencing_token == 1
    fsm.apply(2, envelope(release("r", "a"), 2))
    restore(copy, fsm.snapshot())
    for machine, component in ((fsm, locks), (copy, copied)):
        assert machine.apply(3, envelope(acquire("r", "a"), 1)) == first  # answered, not applied again
        assert not component.describe("r", 0).holders


# ---------------------------------------------------------------------- random sequences against the model

RESOURCES = ("r1", "r2", "r3")
OWNERS = ("a", "b", "c", "d", "e", "f")


def normalise(result: Result) -> Outcome:
    if isinstance(result, Refusal):
        return ("refused", result.code, result.message.startswith("deadlock"))
    if isinstance(result, fsm_lock_pb2.LockAcquireOutcome):
        if result.HasField("queued"):
            return ("queued", result.queued.ahead, result.queued.wait_id)
        g = result.granted
        return ("granted", g.owner, g.fencing_token, Mode(g.mode))
    if isinstance(result, lock_pb2.ReleaseResponse):
        return ("released", result.fencing_token)
    assert isinstance(result, lock_pb2.RefreshResponse)
    return ("refreshed", result.fencing_token, round(result.ttl_seconds * 1000))


def normalise_event(event: object) -> Outcome:
    if isinstance(event, LockGranted):
        return ("granted", event.key[1], event.key[2], event.response.fencing_token, event.wait_id)
    assert isinstance(event, LockWaitEnded)
    return ("ended", event.key[1], event.key[2], event.wait_id)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(("r1", "r2", "r3")), st.integers(0, 9), st.sampled_from([X, S]), st.booleans()),
        max_size=50,
    )
)
def test_deadlock_refusals_in_long_mixed_queues_agree_with_the_model(steps: list[tuple[str, int, Mode, bool]]) -> None:
    """Long queues mixing shared and exclusive requests (time stands still, so nobody
    leaves a queue but by a grant): the machine's wait-for graph, which keeps only the
    nearest group ahead, refuses exactly what the model's full graph calls a deadlock."""
    log, model = Log(), Model()
    for resource, number, mode, is_release in steps:
        owner = f"o{number}"
        if is_release:
            assert normalise(log.run(release(resource, owner))) == model.release(resource, owner)
        else:
            expected = model.acquire(resource, owner, mode, MAX_TIMEOUT_MS, 0, log.index + 1)
            assert normalise(log.run(acquire(resource, owner, mode, MAX_TIMEOUT_MS))) == expected
        model.finish()
        assert [normalise_event(e) for e in log.take_events()] == model.events
        model.events = []


class LockSequences(RuleBasedStateMachine):
    """The machine and the model see the same operations; so does a copy restored from a
    snapshot of the machine at random points.  All three must agree throughout."""

    def __init__(self) -> None:
        super().__init__()
        self.log = Log()
        self.copy = Log()
        self.model = Model()
        self.tokens: dict[str, set[int]] = {}  # resource -> every token granted for it
        self.wait_ids: dict[tuple[str, str], list[int]] = {}  # (resource, owner) -> its waits' ids, in order

    def check(self, resource: str, command: Command, expected: Outcome) -> None:
        got = self.log.run(command)
        assert self.copy.run(command) == got
        assert normalise(got) == expected
        self.model.finish()
        if expected[0] == "queued":
            ids = self.wait_ids.setdefault((resource, command.acquire.owner), [])
            if int(str(expected[2])) not in ids:
                ids.append(int(str(expected[2])))
        if expected[0] == "granted":
            self.saw_token(resource, int(str(expected[2])), renewal_allowed=True)
        self.compare_events()

    def saw_token(self, resource: str, token: int, renewal_allowed: bool) -> None:
        """A new grant's token is above every earlier one of its resource."""
        seen = self.tokens.setdefault(resource, set())
        if not (renewal_allowed and token in seen):
            assert token > max(seen, default=0)
            seen.add(token)

    def compare_events(self) -> None:
        events = [normalise_event(e) for e in self.log.take_events()]
        assert [normalise_event(e) for e in self.copy.take_events()] == events
        assert events == self.model.events
        self.model.events = []
        for event in events:
            if event[0] == "granted":
                self.saw_token(str(event[1]), int(str(event[3])), renewal_allowed=False)

    @rule(
        r=st.sampled_from(RESOURCES),
        o=st.sampled_from(OWNERS),
        mode=st.sampled_from([X, S]),
        timeout=st.sampled_from([0, 0, 100, 400]),
        ttl=st.sampled_from([0, 150, 500]),
    )
    def acquire(self, r: str, o: str, mode: Mode, timeout: int, ttl: int) -> None:
        index = self.log.index + 1
        self.check(r, acquire(r, o, mode, timeout, ttl), self.model.acquire(r, o, mode, timeout, ttl, index))

    @rule(r=st.sampled_from(RESOURCES), o=st.sampled_from(OWNERS))
    def release(self, r: str, o: str) -> None:
        self.check(r, release(r, o), self.model.release(r, o))

    @rule(r=st.sampled_from(RESOURCES), o=st.sampled_from(OWNERS), ttl=st.sampled_from([0, 300]))
    def refresh(self, r: str, o: str, ttl: int) -> None:
        self.check(r, refresh(r, o, ttl), self.model.refresh(r, o, ttl))

    @rule(
        r=st.sampled_from(RESOURCES),
        o=st.sampled_from(OWNERS),
        mode=st.sampled_from([X, S]),
        back=st.sampled_from([0, 0, 1, 2]),
    )
    def withdraw(self, r: str, o: str, mode: Mode, back: int) -> None:
        """Names the owner's latest wait for `r` (current, if it still waits), an earlier
        one `back` waits before, or none (0) if it had none."""
        ids = self.wait_ids.get((r, o), [])
        wait_id = ids[-1 - back] if back < len(ids) else 0
        self.check(r, withdraw(r, o, wait_id, mode), self.model.withdraw(r, o, mode, wait_id))

    @rule(ms=st.sampled_from([1, 50, 100, 150, 400, 1_000]))
    def tick(self, ms: int) -> None:
        self.log.tick(ms)
        self.copy.tick(ms)
        self.model.tick(ms)
        self.compare_events()

    @rule()
    def restart_copy_from_a_snapshot(self) -> None:
        self.copy = Log(LockMachine(), self.log.index, self.log.now_ms)
        restore(self.copy.machine, self.log.machine.snapshot())

    @invariant()
    def machine_copy_and_model_hold_the_same_state(self) -> None:
        assert self.copy.machine.snapshot() == self.log.machine.snapshot()
        now = self.model.now
        for r in RESOURCES:
            info = self.log.info(r)
            lk = self.model.locks.get(r)
            holders = [(h.owner, h.token, (h.expires - now) / 1000) for h in lk.holders] if lk else []
            waiters = [(w.owner, w.mode, w.upgrade, (w.deadline - now) / 1000) for w in lk.queue] if lk else []
            assert [(h.owner, h.fencing_token, h.expires_in_seconds) for h in info.holders] == holders
            assert [(w.owner, Mode(w.mode), w.upgrade, w.expires_in_seconds) for w in info.waiters] == waiters
            assert info.mode == (lk.mode.wire if lk else lock_pb2.LOCK_MODE_UNSPECIFIED)

    @invariant()
    def exclusive_means_alone(self) -> None:
        for r in RESOURCES:
            info = self.log.info(r)
            if info.mode == lock_pb2.LOCK_MODE_EXCLUSIVE:
                assert len(info.holders) == 1

    @invariant()
    def the_wait_for_graph_stays_acyclic(self) -> None:
        graph = self.model.edges()
        for owner, blockers in graph.items():
            assert not any(self.model.reaches(b, owner) for b in blockers), graph


LockSequences.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_random_sequences_agree_with_the_model = LockSequences.TestCase
