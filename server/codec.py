"""Conversion between the Raft core's dataclasses and the `dsync.raft.v1` protobuf messages.

Every peer message and every persisted entry passes through here, so the code favours
speed over generality: fields are assigned one by one on messages created empty (in upb
that is cheaper than keyword constructors), entries are appended in place to the
repeated field rather than built and copied, and each message type has its own small
encoder and decoder instead of a generic field walk.

Each MsgType maps to exactly one case of `RaftMessage.body` (see `_CODECS`); a body carries
only the Message fields that its type uses, so those are the fields a round trip keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from dsync.raft.v1 import raft_pb2 as pb
from server.raft.types import Entry, EntryKind, HardState, Message, MsgType, Snapshot, SnapshotMeta


class _KindTable(dict[int, EntryKind]):
    """Maps wire values to EntryKind; an unknown or unset kind means corrupt input."""

    def __missing__(self, key: int) -> EntryKind:
        raise ValueError(f"entry kind {key} is not a known EntryKind")


# Explicit both ways, so neither side's numbering has to follow the other's.
_PB_KINDS: dict[EntryKind, pb.EntryKind.ValueType] = {
    EntryKind.NORMAL: pb.ENTRY_KIND_NORMAL,
    EntryKind.NOOP: pb.ENTRY_KIND_NOOP,
}
_KINDS = _KindTable((wire, kind) for kind, wire in _PB_KINDS.items())


def _fill_entries(out: RepeatedCompositeFieldContainer[pb.Entry], entries: Iterable[Entry]) -> None:
    add = out.add
    kinds = _PB_KINDS
    for e in entries:
        p = add()
        p.term = e.term
        p.index = e.index
        p.kind = kinds[e.kind]
        p.data = e.data


def _entries(entries: Iterable[pb.Entry]) -> list[Entry]:
    kinds = _KINDS
    return [Entry(p.term, p.index, p.data, kinds[p.kind]) for p in entries]


def encode_entry(entry: Entry) -> bytes:
    p = pb.Entry()
    p.term = entry.term
    p.index = entry.index
    p.kind = _PB_KINDS[entry.kind]
    p.data = entry.data
    return p.SerializeToString()


def decode_entry(data: bytes) -> Entry:
    """Raises google.protobuf.message.DecodeError or ValueError on corrupt input."""
    p = pb.Entry.FromString(data)
    return Entry(p.term, p.index, p.data, _KINDS[p.kind])


def encode_hard_state(state: HardState) -> bytes:
    p = pb.HardState()
    p.term = state.term
    p.vote = state.vote
    p.commit = state.commit
    return p.SerializeToString()


def decode_hard_state(data: bytes) -> HardState:
    p = pb.HardState.FromString(data)
    return HardState(p.term, p.vote, p.commit)


# One encoder and one decoder per body type.  An encoder fills the (empty) body of the
# outgoing envelope; a decoder builds the Message from the envelope fields and the body.
_Decoder = Callable[[MsgType, str, str, int, Any], Message]
_Encoder = Callable[[Message, Any], None]


def _enc_request_vote(m: Message, b: pb.RequestVote) -> None:
    b.last_log_index = m.index
    b.last_log_term = m.log_term
    b.force = m.force


def _dec_request_vote(t: MsgType, src: str, dst: str, term: int, b: pb.RequestVote) -> Message:
    return Message(t, src, dst, term, index=b.last_log_index, log_term=b.last_log_term, force=b.force)


def _enc_request_vote_result(m: Message, b: pb.RequestVoteResult) -> None:
    b.reject = m.reject


def _dec_request_vote_result(t: MsgType, src: str, dst: str, term: int, b: pb.RequestVoteResult) -> Message:
    return Message(t, src, dst, term, reject=b.reject)


def _enc_append_entries(m: Message, b: pb.AppendEntries) -> None:
    b.prev_log_index = m.index
    b.prev_log_term = m.log_term
    b.leader_commit = m.commit
    _fill_entries(b.entries, m.entries)


def _dec_append_entries(t: MsgType, src: str, dst: str, term: int, b: pb.AppendEntries) -> Message:
    return Message(
        t,
        src,
        dst,
        term,
        index=b.prev_log_index,
        log_term=b.prev_log_term,
        entries=_entries(b.entries),
        commit=b.leader_commit,
    )


def _enc_append_entries_result(m: Message, b: pb.AppendEntriesResult) -> None:
    b.reject = m.reject
    b.index = m.index
    b.conflict_index = m.conflict_index
    b.conflict_term = m.conflict_term
    b.incarnation = m.incarnation


def _dec_append_entries_result(t: MsgType, src: str, dst: str, term: int, b: pb.AppendEntriesResult) -> Message:
    return Message(
        t,
        src,
        dst,
        term,
        reject=b.reject,
        index=b.index,
        conflict_index=b.conflict_index,
        conflict_term=b.conflict_term,
        incarnation=b.incarnation,
    )


def _enc_heartbeat(m: Message, b: pb.Heartbeat) -> None:
    b.leader_commit = m.commit
    b.context = m.context
    b.commit_only = m.commit_only


def _dec_heartbeat(t: MsgType, src: str, dst: str, term: int, b: pb.Heartbeat) -> Message:
    return Message(t, src, dst, term, commit=b.leader_commit, context=b.context, commit_only=b.commit_only)


def _enc_heartbeat_result(m: Message, b: pb.HeartbeatResult) -> None:
    b.context = m.context
    b.incarnation = m.incarnation


def _dec_heartbeat_result(t: MsgType, src: str, dst: str, term: int, b: pb.HeartbeatResult) -> Message:
    return Message(t, src, dst, term, context=b.context, incarnation=b.incarnation)


def _enc_context(m: Message, b: pb.ReadIndex) -> None:
    b.context = m.context


def _dec_context(t: MsgType, src: str, dst: str, term: int, b: pb.ReadIndex) -> Message:
    return Message(t, src, dst, term, context=b.context)


def _enc_install_snapshot(m: Message, b: pb.InstallSnapshot) -> None:
    snapshot = m.snapshot
    if snapshot is None:
        raise ValueError(f"{m.type.name} message without a snapshot")
    meta = b.meta
    meta.index = snapshot.meta.index
    meta.term = snapshot.meta.term
    meta.voters.extend(snapshot.meta.voters)
    b.data = snapshot.data


def _dec_install_snapshot(t: MsgType, src: str, dst: str, term: int, b: pb.InstallSnapshot) -> Message:
    meta = b.meta
    snapshot = Snapshot(SnapshotMeta(meta.index, meta.term, tuple(meta.voters)), b.data)
    return Message(t, src, dst, term, snapshot=snapshot)


def _enc_timeout_now(m: Message, b: pb.TimeoutNow) -> None:
    b.SetInParent()  # an empty body is only present once marked so


def _dec_timeout_now(t: MsgType, src: str, dst: str, term: int, b: pb.TimeoutNow) -> Message:
    return Message(t, src, dst, term)


def _enc_propose(m: Message, b: pb.Propose) -> None:
    _fill_entries(b.entries, m.entries)
    b.proposal_ids.extend(m.proposal_ids)


def _dec_propose(t: MsgType, src: str, dst: str, term: int, b: pb.Propose) -> Message:
    return Message(t, src, dst, term, entries=_entries(b.entries), proposal_ids=list(b.proposal_ids))


def _enc_propose_result(m: Message, b: pb.ProposeResult) -> None:
    b.proposal_ids.extend(m.proposal_ids)
    b.reject = m.reject
    b.index = m.index
    b.log_term = m.log_term


def _dec_propose_result(t: MsgType, src: str, dst: str, term: int, b: pb.ProposeResult) -> Message:
    return Message(
        t, src, dst, term, proposal_ids=list(b.proposal_ids), reject=b.reject, index=b.index, log_term=b.log_term
    )


def _enc_read_index_result(m: Message, b: pb.ReadIndexResult) -> None:
    b.context = m.context
    b.index = m.index
    b.reject = m.reject


def _dec_read_index_result(t: MsgType, src: str, dst: str, term: int, b: pb.ReadIndexResult) -> Message:
    return Message(t, src, dst, term, context=b.context, index=b.index, reject=b.reject)


def _enc_transfer_leader(m: Message, b: pb.TransferLeader) -> None:
    b.target = m.target


def _dec_transfer_leader(t: MsgType, src: str, dst: str, term: int, b: pb.TransferLeader) -> Message:
    return Message(t, src, dst, term, target=b.target)


# MsgType -> (RaftMessage.body case, encoder, decoder).  The single source of the mapping.
_CODECS: dict[MsgType, tuple[str, _Encoder, _Decoder]] = {
    MsgType.PRE_VOTE: ("pre_vote", _enc_request_vote, _dec_request_vote),
    MsgType.PRE_VOTE_RESP: ("pre_vote_result", _enc_request_vote_result, _dec_request_vote_result),
    MsgType.VOTE: ("vote", _enc_request_vote, _dec_request_vote),
    MsgType.VOTE_RESP: ("vote_result", _enc_request_vote_result, _dec_request_vote_result),
    MsgType.APPEND: ("append_entries", _enc_append_entries, _dec_append_entries),
    MsgType.APPEND_RESP: ("append_entries_result", _enc_append_entries_result, _dec_append_entries_result),
    MsgType.HEARTBEAT: ("heartbeat", _enc_heartbeat, _dec_heartbeat),
    MsgType.HEARTBEAT_RESP: ("heartbeat_result", _enc_heartbeat_result, _dec_heartbeat_result),
    MsgType.SNAPSHOT: ("install_snapshot", _enc_install_snapshot, _dec_install_snapshot),
    MsgType.TIMEOUT_NOW: ("timeout_now", _enc_timeout_now, _dec_timeout_now),
    MsgType.PROPOSE: ("propose", _enc_propose, _dec_propose),
    MsgType.PROPOSE_RESP: ("propose_result", _enc_propose_result, _dec_propose_result),
    MsgType.READ_INDEX: ("read_index", _enc_context, _dec_context),
    MsgType.READ_INDEX_RESP: ("read_index_result", _enc_read_index_result, _dec_read_index_result),
    MsgType.TRANSFER_LEADER: ("transfer_leader", _enc_transfer_leader, _dec_transfer_leader),
}
_ENCODERS = {t: (case, enc) for t, (case, enc, _) in _CODECS.items()}
_DECODERS = {case: (t, dec) for t, (case, _, dec) in _CODECS.items()}


def message_to_pb(m: Message) -> pb.RaftMessage:
    out = pb.RaftMessage()
    out.src = m.src
    out.dst = m.dst
    out.term = m.term
    case, encode = _ENCODERS[m.type]
    encode(m, getattr(out, case))
    return out


def message_from_pb(p: pb.RaftMessage) -> Message:
    """Raises ValueError for a message without a body or with corrupt entries."""
    case = p.WhichOneof("body")
    if case is None:
        raise ValueError(f"RaftMessage from {p.src!r} to {p.dst!r} has no body")
    msg_type, decode = _DECODERS[case]
    return decode(msg_type, p.src, p.dst, p.term, getattr(p, case))
