"""What a caller of the replica is told when a proposal or read does not succeed.

Every error here is retryable -- later, or on another node -- so what a caller needs
to know is whether a retry could apply its command twice.  `maybe_committed` says so:
False means the command never entered any log (or never will commit), so a plain
retry is safe; True means the command may still commit, so only a retry carrying the
same client request id is safe (once the services deduplicate by it).

`leader` is the node this replica believed to be leader when the error was raised
("" when it knew none): where a client should send its retry.
"""

from __future__ import annotations

from server.raft import FailReason, NodeId


class ReplicaError(Exception):
    maybe_committed = False

    def __init__(self, message: str, *, leader: NodeId = "", maybe_committed: bool | None = None) -> None:
        super().__init__(message)
        self.leader = leader
        if maybe_committed is not None:
            self.maybe_committed = maybe_committed


class NoLeader(ReplicaError):
    """No leader is known (an election is under way, or this node is cut off)."""


class NotLeader(ReplicaError):
    """The node asked is not (or no longer) the leader; `leader` hints at the one to ask."""


class ProposalDropped(ReplicaError):
    """A new leader overwrote the proposal's entry: it is not committed and never will be."""


class CommitUnknown(ReplicaError):
    """No answer in time: the proposal may or may not commit."""

    maybe_committed = True


class ReadTimeout(ReplicaError):
    """The read could not be confirmed in time; nothing was read."""


class Overloaded(ReplicaError):
    """Too much in flight, or applying lags committing: back off before retrying."""


class Stopped(ReplicaError):
    """The replica stopped (shut down or failed) before answering."""


def proposal_error(reason: FailReason, node: NodeId, leader: NodeId) -> ReplicaError:
    """The error for a proposal the core reports as failed."""
    if reason is FailReason.NO_LEADER:
        return NoLeader(f"{node} knows no leader (an election is under way): retry shortly", leader=leader)
    if reason is FailReason.NOT_LEADER:
        return NotLeader(
            f"the leader refused the proposal (it stepped down or is handing over): retry on "
            f"{leader or 'the new leader'} shortly",
            leader=leader,
        )
    if reason is FailReason.SUPERSEDED:
        return ProposalDropped(
            "a new leader replaced the proposal's log entry, so it will never commit: retry it",
            leader=leader,
        )
    return CommitUnknown(
        "the leader did not confirm the proposal in time; it may still commit: retry with the "
        "same request id",
        leader=leader,
    )


def read_error(reason: FailReason, node: NodeId, leader: NodeId) -> ReplicaError:
    """The error for a read index the core reports as failed."""
    if reason is FailReason.NO_LEADER:
        return NoLeader(f"{node} knows no leader (an election is under way): retry the read shortly", leader=leader)
    if reason is FailReason.TIMEOUT:
        return ReadTimeout(
            f"the leader {leader or '(unknown)'} did not confirm the read in time: retry it, "
            "on another node if this one is cut off",
            leader=leader,
        )
    return NotLeader(
        "leadership changed before the read was confirmed by a quorum: retry it on "
        f"{leader or 'the new leader'}",
        leader=leader,
    )
