"""The entry header that routes results home, and what each core failure tells a caller."""

from __future__ import annotations

import pytest

from server.raft import FailReason
from server.replica import CommitUnknown, NoLeader, NotLeader, ProposalDropped, ReadTimeout
from server.replica.envelope import HEADER_SIZE, RequestIds, unwrap, wrap
from server.replica.errors import proposal_error, read_error


def test_a_wrapped_command_unwraps_to_its_request_id_and_bytes() -> None:
    ids = RequestIds()
    first, second = ids.next(), ids.next()
    assert second == (first + 1) % (1 << 64)
    assert unwrap(wrap(first, b"cmd")) == (first, b"cmd")
    assert unwrap(wrap(second, b"")) == (second, b"")


def test_data_too_short_for_a_header_carries_no_request_id() -> None:
    assert unwrap(b"x" * (HEADER_SIZE - 1)) == (None, b"x" * (HEADER_SIZE - 1))


def test_two_incarnations_draw_different_ids() -> None:
    assert RequestIds().next() != RequestIds().next()


@pytest.mark.parametrize(
    ("reason", "kind", "maybe_committed"),
    [
        (FailReason.NO_LEADER, NoLeader, False),
        (FailReason.NOT_LEADER, NotLeader, False),
        (FailReason.SUPERSEDED, ProposalDropped, False),
        (FailReason.TIMEOUT, CommitUnknown, True),
    ],
)
def test_a_failed_proposal_says_whether_a_retry_could_apply_it_twice(
    reason: FailReason, kind: type[Exception], maybe_committed: bool
) -> None:
    error = proposal_error(reason, "n1", "n2")
    assert type(error) is kind
    assert error.maybe_committed is maybe_committed
    assert error.leader == "n2"


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (FailReason.NO_LEADER, NoLeader),
        (FailReason.NOT_LEADER, NotLeader),
        (FailReason.LEADERSHIP_LOST, NotLeader),
        (FailReason.TIMEOUT, ReadTimeout),
    ],
)
def test_a_failed_read_names_its_cause(reason: FailReason, kind: type[Exception]) -> None:
    error = read_error(reason, "n1", "")
    assert type(error) is kind
    assert not error.maybe_committed
