"""The router's shared rules: time only from the leader's clock, retries applied once,
snapshots exact.  A tiny counter component stands in for a service here."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import wrappers_pb2

from dsync.fsm.v1 import command_pb2
from server.fsm.base import EVERY_WAIT, ApplyContext, Code, Refusal, Result, StateRestored
from server.fsm.protocols import restore
from server.fsm.router import SESSION_IDLE_MS, SESSION_RESULT_BYTES, SESSION_RESULTS, DsyncStateMachine


class Counter:
    """Counts applies; refuses b"bad"; records the times `advance` saw."""

    def __init__(self) -> None:
        self.count = 0
        self.seen_now: list[int] = []

    def apply(self, command: bytes, ctx: ApplyContext) -> Result:
        if command == b"bad":
            return Refusal(Code.INVALID_ARGUMENT, "bad")
        self.count += 1
        if command.startswith(b"bytes:"):  # an answer of that many bytes, as a Consume's may be
            return wrappers_pb2.BytesValue(value=b"%d" % self.count * int(command[6:]))
        return wrappers_pb2.UInt64Value(value=self.count)

    def advance(self, ctx: ApplyContext) -> None:
        self.seen_now.append(ctx.now_ms)

    def snapshot(self) -> bytes:
        return self.count.to_bytes(8, "big")

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        count = int.from_bytes(data, "big") if data else 0

        def install() -> None:
            self.count = count

        return install


def cmd(payload: bytes = b"x", client: str = "", seq: int = 0) -> bytes:
    return command_pb2.Command(client_id=client, sequence=seq, lock=payload).SerializeToString()


def clock(term: int, ms: int) -> bytes:
    return command_pb2.Command(clock=command_pb2.Clock(term=term, monotonic_ms=ms)).SerializeToString()


def machine() -> tuple[DsyncStateMachine, Counter]:
    counter = Counter()
    return DsyncStateMachine({"lock": counter}), counter


def test_time_advances_by_differences_within_a_term_and_stands_still_across_terms() -> None:
    fsm, counter = machine()
    fsm.apply(1, clock(term=1, ms=5_000))  # first reading: an epoch starts, time stays 0
    fsm.apply(2, clock(term=1, ms=5_300))
    assert fsm.now_ms == 300
    # A new leader whose clock reads far behind (or ahead): a new epoch, no jump.
    fsm.apply(3, clock(term=2, ms=10))
    assert fsm.now_ms == 300
    fsm.apply(4, clock(term=2, ms=110))
    assert fsm.now_ms == 400
    # A deposed leader's reading committed late, and a reading going backwards: ignored.
    fsm.apply(5, clock(term=1, ms=99_999))
    fsm.apply(6, clock(term=2, ms=50))
    assert fsm.now_ms == 400
    assert counter.seen_now == [300, 400]


def test_a_retried_write_is_applied_once_and_gets_the_first_result() -> None:
    fsm, counter = machine()
    first = fsm.apply(1, cmd(client="c1", seq=1))
    again = fsm.apply(2, cmd(client="c1", seq=1))
    assert first == again == wrappers_pb2.UInt64Value(value=1)
    assert counter.count == 1
    assert fsm.apply(3, cmd(client="c1", seq=2)) == wrappers_pb2.UInt64Value(value=2)
    assert fsm.apply(4, cmd(client="c2", seq=1)) == wrappers_pb2.UInt64Value(value=3)
    # Without a client id nothing is deduplicated.
    fsm.apply(5, cmd())
    fsm.apply(6, cmd())
    assert counter.count == 5


def test_refusals_are_remembered_too_and_forgotten_sequences_are_refused() -> None:
    fsm, counter = machine()
    refused = fsm.apply(1, cmd(b"bad", client="c", seq=1))
    assert isinstance(refused, Refusal) and fsm.apply(2, cmd(b"x", client="c", seq=1)) == refused
    for seq in range(2, SESSION_RESULTS + 3):
        fsm.apply(seq + 1, cmd(client="c", seq=seq))
    stale = fsm.apply(10_000, cmd(client="c", seq=1))
    assert isinstance(stale, Refusal) and stale.code is Code.FAILED_PRECONDITION
    assert "header.sequence" in stale.message


def test_an_answer_dropped_for_its_size_leaves_the_sessions_other_writes_as_they_were() -> None:
    """One large answer pushed out by the next one must not make a lower sequence still in
    flight look forgotten: it is applied when it arrives, and only the large one's retry is
    refused."""
    fsm, counter = machine()
    fsm.apply(1, cmd(b"bytes:%d" % (SESSION_RESULT_BYTES + 10), client="c", seq=2))
    fsm.apply(2, cmd(b"bytes:1", client="c", seq=3))
    late = fsm.apply(3, cmd(b"bytes:1", client="c", seq=1))  # sent first, committed last
    assert late == wrappers_pb2.BytesValue(value=b"3") and counter.count == 3  # the third apply
    copy, _ = machine()
    restore(copy, fsm.snapshot())
    assert copy.snapshot() == fsm.snapshot()
    for replica in (fsm, copy):
        retry = replica.apply(4, cmd(b"bytes:1", client="c", seq=2))
        assert isinstance(retry, Refusal) and retry.code is Code.FAILED_PRECONDITION
        assert "header.sequence 2 was applied, but" in retry.message and "no longer keeps" in retry.message
        assert replica.apply(5, cmd(b"bytes:1", client="c", seq=3)) == wrappers_pb2.BytesValue(value=b"2")
    assert counter.count == 3


def test_a_session_keeps_a_bounded_number_of_bytes_but_always_its_newest_result() -> None:
    fsm, counter = machine()
    quarter = SESSION_RESULT_BYTES // 4
    for seq in range(1, 6):  # five quarters: the oldest no longer fits beside the newest
        fsm.apply(seq, cmd(b"bytes:%d" % quarter, client="c", seq=seq))
    huge = fsm.apply(6, cmd(b"bytes:%d" % (2 * SESSION_RESULT_BYTES), client="c", seq=6))
    applied = counter.count
    data = fsm.snapshot()
    assert len(data) < SESSION_RESULT_BYTES + 2 * SESSION_RESULT_BYTES + 1024  # older results, then the newest
    copy, _ = machine()
    restore(copy, data)
    assert copy.snapshot() == data
    for replica in (fsm, copy):
        assert replica.apply(7, cmd(b"bytes:1", client="c", seq=6)) == huge  # the newest, however large
        assert replica.apply(8, cmd(b"bytes:1", client="c", seq=3)) == wrappers_pb2.BytesValue(value=b"3" * quarter)
        forgotten = replica.apply(9, cmd(b"bytes:1", client="c", seq=1))
        assert isinstance(forgotten, Refusal) and forgotten.code is Code.FAILED_PRECONDITION
        assert "no longer keeps" in forgotten.message and "new sequence numbers" in forgotten.message
    assert counter.count == applied
    # Small results still fill the whole count.
    for seq in range(7, 7 + SESSION_RESULTS):
        fsm.apply(seq + 10, cmd(client="c", seq=seq))
    assert fsm.apply(10_000, cmd(client="c", seq=7)) == wrappers_pb2.UInt64Value(value=applied + 1)


def test_idle_sessions_expire_with_cluster_time() -> None:
    fsm, counter = machine()
    fsm.apply(1, clock(1, 0))
    fsm.apply(2, cmd(client="c", seq=1))
    fsm.apply(3, clock(1, SESSION_IDLE_MS + 1))
    fsm.apply(4, cmd(client="c", seq=1))  # the session is gone: applied again
    assert counter.count == 2


def test_undecodable_or_empty_commands_are_refused_without_effect() -> None:
    fsm, counter = machine()
    for junk in (b"\xff\xff\xff", command_pb2.Command().SerializeToString(), cmd_for("queue")):
        result = fsm.apply(1, junk)
        assert isinstance(result, Refusal) and result.code is Code.INVALID_ARGUMENT
    assert counter.count == 0


def cmd_for(service: str) -> bytes:
    envelope = command_pb2.Command()
    setattr(envelope, service, b"x")
    return envelope.SerializeToString()


def test_snapshot_restores_clock_sessions_and_components_exactly() -> None:
    fsm, counter = machine()
    fsm.apply(1, clock(3, 1_000))
    fsm.apply(2, clock(3, 1_250))
    fsm.apply(3, cmd(client="c", seq=7))
    fsm.apply(4, cmd(b"bad", client="d", seq=1))
    data = fsm.snapshot()
    copy, copied = machine()
    restore(copy, data)
    assert copy.snapshot() == data
    assert (copy.clock_term, copy.last_reading_ms, copy.now_ms) == (3, 1_250, 250)
    assert copied.count == 1
    # The restored sessions answer retries exactly as the original would.
    assert copy.apply(5, cmd(client="c", seq=7)) == fsm.apply(5, cmd(client="c", seq=7))
    assert copy.apply(6, cmd(client="d", seq=1)) == fsm.apply(6, cmd(client="d", seq=1))
    assert copied.count == counter.count == 1


def test_installing_a_restored_state_wakes_every_waiting_rpc_once_the_state_is_in_place() -> None:
    """The snapshot stands for entries whose apply would have announced what they decided."""
    fsm, _ = machine()
    fsm.apply(1, cmd(client="c", seq=1))
    copy, _ = machine()
    events: list[object] = []
    copy.emit = events.append
    install = copy.prepare_restore(fsm.snapshot())
    assert events == []  # the waiting RPCs would look at the old state
    install()
    assert events == [StateRestored()] and StateRestored().key == EVERY_WAIT


# One client's concurrent writes may commit out of sequence order (the SDK shares one
# session between tasks and threads).


def test_writes_of_one_client_that_commit_out_of_sequence_order_are_all_applied() -> None:
    fsm, counter = machine()
    assert fsm.apply(1, cmd(client="c", seq=2)) == wrappers_pb2.UInt64Value(value=1)
    late = fsm.apply(2, cmd(client="c", seq=1))  # sent first, committed second: a new write
    assert late == wrappers_pb2.UInt64Value(value=2), f"a never-applied write was refused: {late}"
    assert counter.count == 2


def test_a_retry_is_never_applied_twice_however_one_client_s_writes_were_ordered() -> None:
    fsm, counter = machine()
    results = {}
    for index, seq in enumerate([1, 3, 2, *range(4, SESSION_RESULTS + 3)], start=1):
        results[seq] = fsm.apply(index, cmd(client="c", seq=seq))  # 258 writes: two results forgotten
    applied = counter.count
    retry = fsm.apply(10_000, cmd(client="c", seq=3))  # seq 3's answer was lost; it is retried
    assert counter.count == applied, "the retried write was applied a second time"
    forgotten = isinstance(retry, Refusal) and retry.code is Code.FAILED_PRECONDITION
    assert forgotten or retry == results[3]


def test_a_client_id_without_a_sequence_is_refused_so_later_writes_are_not_answered_with_the_first() -> None:
    fsm, counter = machine()
    for index in (1, 2):
        refused = fsm.apply(index, cmd(client="c", seq=0))
        assert isinstance(refused, Refusal) and refused.code is Code.INVALID_ARGUMENT
        assert "header.sequence" in refused.message
    assert counter.count == 0

