"""Plain data exchanged between the Raft core and its driver.

The core uses its own slotted dataclasses rather than generated protobuf classes:
it stays importable with the standard library alone, and building a dataclass is
several times cheaper than building a protobuf message on the hot path.  The
transport converts these to and from `dsync.raft.v1` messages at the edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NodeId = str


class Role(enum.IntEnum):
    FOLLOWER = 1
    PRE_CANDIDATE = 2
    CANDIDATE = 3
    LEADER = 4


class EntryKind(enum.IntEnum):
    NORMAL = 1
    NOOP = 2  # appended by every new leader so it can commit entries of its own term


@dataclass(slots=True, frozen=True)
class Entry:
    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be on stable storage before the node sends anything that depends on it."""

    term: int = 0
    vote: NodeId = ""  # "" means no vote cast in `term`
    commit: int = 0


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """The point the log begins after: entries up to `index` live only in the snapshot."""

    index: int = 0
    term: int = 0
    voters: tuple[NodeId, ...] = ()


@dataclass(slots=True, frozen=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes = b""


class MsgType(enum.IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5  # AppendEntries carrying entries (possibly none, when probing)
    APPEND_RESP = 6
    HEARTBEAT = 7  # AppendEntries without entries; `context` carries a ReadIndex round
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # InstallSnapshot
    TIMEOUT_NOW = 10  # leadership transfer: start an election at once
    PROPOSE = 11  # proposals forwarded by a follower to its leader
    PROPOSE_RESP = 12
    READ_INDEX = 13  # ReadIndex requested through a follower
    READ_INDEX_RESP = 14
    TRANSFER_LEADER = 15  # transfer request forwarded to the leader


@dataclass(slots=True)
class Message:
    """One peer message.  Which fields matter depends on `type`; see the core's handlers.

    `term` is the sender's current term (for PRE_VOTE: the term it would campaign in).
    """

    type: MsgType
    src: NodeId
    dst: NodeId
    term: int
    # AppendEntries / votes: the entry preceding `entries`, or the candidate's last entry.
    index: int = 0
    log_term: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    # Responses: reject=True means not granted / not matched.
    reject: bool = False
    # APPEND_RESP on reject: the thesis' fast back-off hints; on success `index` is the match.
    conflict_index: int = 0
    conflict_term: int = 0
    # HEARTBEAT(_RESP) and READ_INDEX(_RESP): the read round or the follower's request ids.
    context: bytes = b""
    # PROPOSE / PROPOSE_RESP: proposal ids of the follower, one per entry.
    proposal_ids: list[int] = field(default_factory=list)
    snapshot: Snapshot | None = None
    # VOTE sent after TIMEOUT_NOW: voters skip the leader-stickiness check.
    force: bool = False
    # TRANSFER_LEADER: the node that should become leader.
    target: NodeId = ""
    # HEARTBEAT that only tells a new commit index: left unanswered, since the append
    # responses and the periodic heartbeats already keep the leader's view current.
    commit_only: bool = False
    # APPEND_RESP / HEARTBEAT_RESP: the sender's Config.incarnation (0: not tracked).
    incarnation: int = 0


class FailReason(enum.IntEnum):
    """Why a proposal or read did not succeed; tells the caller whether a retry is safe."""

    NO_LEADER = 1  # never entered any log: retry elsewhere / later
    NOT_LEADER = 2  # the leader refused it (stepped down, transferring): never entered any log
    SUPERSEDED = 3  # its index was committed with another entry: it never will be
    TIMEOUT = 4  # no answer in time: it may or may not commit; retry with the same request id
    LEADERSHIP_LOST = 5  # a read could not be confirmed by a quorum


# Reasons that guarantee the proposal is not, and will never be, committed.
DEFINITE_FAILURES = frozenset({FailReason.NO_LEADER, FailReason.NOT_LEADER, FailReason.SUPERSEDED})


@dataclass(slots=True, frozen=True)
class ProposalOutcome:
    """The fate of one local proposal.  `index` > 0 and `reason` None means committed."""

    proposal_id: int
    index: int = 0
    reason: FailReason | None = None


@dataclass(slots=True, frozen=True)
class ReadState:
    """A ReadIndex answer: once `index` is applied, a read for `context` is linearizable."""

    context: bytes
    index: int = 0
    reason: FailReason | None = None


@dataclass(slots=True, frozen=True)
class SoftState:
    role: Role
    leader: NodeId  # "" when unknown
    term: int


@dataclass(slots=True)
class Ready:
    """One batch of effects.  The driver must, in order:

    1. persist `snapshot` (if any), then `hard_state` (if any) and `entries`
       (entries replace any stored suffix starting at entries[0].index);
    2. send `messages` -- or, when `send_first` is set, send them before step 1 and
       persist while they travel (thesis §10.2.1: a leader, whose term and vote are
       already durable, counts its own copy of an entry only once `advance` says it
       is saved, so its appends need not wait for its disk);
    3. restore `snapshot` into the state machine (if any), then apply `committed`
       -- except that, without a snapshot, committed entries before entries[0] are
       already durable here and may be applied before step 1;
    4. deliver `outcomes` and `read_states` (a read waits until its index is applied);
    5. call `advance(ready)`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    outcomes: list[ProposalOutcome] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    send_first: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.committed
            or self.outcomes
            or self.read_states
        )


@dataclass(slots=True, frozen=True)
class Config:
    """Timing is in ticks; the driver decides how long a tick lasts."""

    node_id: NodeId
    voters: tuple[NodeId, ...]
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_entries_per_msg: int = 1024
    max_bytes_per_msg: int = 1 << 20
    max_inflight_msgs: int = 64
    max_inflight_bytes: int = 8 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    # Random per start of the process, sent with every answer to a leader, so the leader
    # can tell a restarted follower -- which, on storage that does not fsync every write,
    # may hold less than it acknowledged -- from one that is merely slow.  0: not sent.
    incarnation: int = 0

    def __post_init__(self) -> None:
        if self.node_id not in self.voters:
            raise ValueError(f"node {self.node_id!r} is not among the voters {list(self.voters)}")
        if len(set(self.voters)) != len(self.voters):
            raise ValueError(f"voters must be distinct, got {list(self.voters)}")
        if not 0 <= self.incarnation < 1 << 64:
            raise ValueError(f"incarnation must fit in 64 bits unsigned, got {self.incarnation}")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
