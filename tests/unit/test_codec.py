"""server.codec must be exact: whatever a message type carries survives the wire unchanged."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsync.raft.v1 import raft_pb2 as pb
from server.codec import (
    decode_entry,
    decode_hard_state,
    encode_entry,
    encode_hard_state,
    message_from_pb,
    message_to_pb,
)
from server.raft.types import Entry, EntryKind, HardState, Message, MsgType, Snapshot, SnapshotMeta
from tests.sim.cluster import Simulation, run_schedule

# The Message fields each type carries on the wire (besides type, src, dst and term).
CARRIED: dict[MsgType, frozenset[str]] = {
    MsgType.PRE_VOTE: frozenset({"index", "log_term", "force"}),
    MsgType.PRE_VOTE_RESP: frozenset({"reject"}),
    MsgType.VOTE: frozenset({"index", "log_term", "force"}),
    MsgType.VOTE_RESP: frozenset({"reject"}),
    MsgType.APPEND: frozenset({"index", "log_term", "entries", "commit"}),
    MsgType.APPEND_RESP: frozenset({"reject", "index", "conflict_index", "conflict_term", "incarnation"}),
    MsgType.HEARTBEAT: frozenset({"commit", "context", "commit_only"}),
    MsgType.HEARTBEAT_RESP: frozenset({"context", "incarnation"}),
    MsgType.SNAPSHOT: frozenset({"snapshot"}),
    MsgType.TIMEOUT_NOW: frozenset(),
    MsgType.PROPOSE: frozenset({"entries", "proposal_ids"}),
    MsgType.PROPOSE_RESP: frozenset({"proposal_ids", "reject", "index", "log_term"}),
    MsgType.READ_INDEX: frozenset({"context"}),
    MsgType.READ_INDEX_RESP: frozenset({"context", "index", "reject"}),
    MsgType.TRANSFER_LEADER: frozenset({"target"}),
}
ENVELOPE = frozenset({"type", "src", "dst", "term"})

u64 = st.integers(min_value=0, max_value=2**64 - 1)
node_ids = st.text(st.characters(codec="utf-8"), max_size=8)
entries = st.lists(st.builds(Entry, u64, u64, st.binary(max_size=32), st.sampled_from(EntryKind)), max_size=5)
snapshots = st.builds(
    Snapshot, st.builds(SnapshotMeta, u64, u64, st.lists(node_ids, max_size=5).map(tuple)), st.binary(max_size=64)
)


def messages(msg_type: MsgType) -> st.SearchStrategy[Message]:
    """Messages of `msg_type` with every field set at random, carried or not."""
    return st.builds(
        Message,
        type=st.just(msg_type),
        src=node_ids,
        dst=node_ids,
        term=u64,
        index=u64,
        log_term=u64,
        entries=entries,
        commit=u64,
        reject=st.booleans(),
        conflict_index=u64,
        conflict_term=u64,
        context=st.binary(max_size=32),
        proposal_ids=st.lists(u64, max_size=5),
        snapshot=snapshots,
        force=st.booleans(),
        target=node_ids,
        commit_only=st.booleans(),
        incarnation=u64,
    )


def carried_only(m: Message) -> Message:
    """`m` with every field its type does not carry reset to the default."""
    blank = Message(m.type, m.src, m.dst, m.term)
    return replace(blank, **{f: getattr(m, f) for f in CARRIED[m.type]})


def over_the_wire(m: Message) -> Message:
    return message_from_pb(pb.RaftMessage.FromString(message_to_pb(m).SerializeToString()))


def test_every_message_the_core_sends_survives_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """CARRIED is only right if the real core never sets a field its message type drops."""
    seen: set[MsgType] = set()
    deliver = Simulation._send

    def send(sim: Simulation, msg: Message) -> None:
        back = over_the_wire(msg)
        assert back == msg
        seen.add(msg.type)
        deliver(sim, back)

    monkeypatch.setattr(Simulation, "_send", send)
    for seed in range(20):
        run_schedule(seed)
    assert seen == set(MsgType), "widen the seed range until the simulation sends every type"


def test_carried_table_names_real_fields() -> None:
    names = {f.name for f in fields(Message)}
    assert CARRIED.keys() == set(MsgType)
    assert all(carried <= names - ENVELOPE for carried in CARRIED.values())


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
@given(data=st.data())
def test_round_trip_keeps_exactly_the_carried_fields(msg_type: MsgType, data: st.DataObject) -> None:
    m = data.draw(messages(msg_type))
    assert over_the_wire(m) == carried_only(m)


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_body_is_present_even_when_every_field_is_default(msg_type: MsgType) -> None:
    snapshot = Snapshot(SnapshotMeta()) if msg_type is MsgType.SNAPSHOT else None
    m = Message(msg_type, "", "", 0, snapshot=snapshot)
    assert over_the_wire(m) == m


def test_each_message_type_has_its_own_body_case() -> None:
    snapshot = Snapshot(SnapshotMeta())
    cases = {message_to_pb(Message(t, "a", "b", 1, snapshot=snapshot)).WhichOneof("body") for t in MsgType}
    oneof = pb.RaftMessage.DESCRIPTOR.oneofs_by_name["body"]
    assert len(cases) == len(MsgType)
    assert cases == {f.name for f in oneof.fields}


def test_snapshot_message_needs_a_snapshot() -> None:
    with pytest.raises(ValueError, match="without a snapshot"):
        message_to_pb(Message(MsgType.SNAPSHOT, "a", "b", 1))


def test_message_without_body_is_rejected() -> None:
    with pytest.raises(ValueError, match="no body"):
        message_from_pb(pb.RaftMessage(src="a", dst="b", term=1))


@given(st.builds(Entry, u64, u64, st.binary(max_size=64), st.sampled_from(EntryKind)))
def test_entry_round_trip(entry: Entry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


def test_entry_bytes_are_the_protobuf_entry() -> None:
    data = encode_entry(Entry(term=3, index=7, data=b"cmd", kind=EntryKind.NOOP))
    assert pb.Entry.FromString(data) == pb.Entry(term=3, index=7, kind=pb.ENTRY_KIND_NOOP, data=b"cmd")


@pytest.mark.parametrize("kind", [pb.ENTRY_KIND_UNSPECIFIED, 99])
def test_entry_of_unknown_kind_is_rejected(kind: int) -> None:
    with pytest.raises(ValueError, match="not a known EntryKind"):
        decode_entry(pb.Entry(term=1, index=1, kind=kind).SerializeToString())  # type: ignore[arg-type]


def test_append_with_entry_of_unknown_kind_is_rejected() -> None:
    p = pb.RaftMessage(src="a", dst="b", term=1)
    p.append_entries.entries.add(term=1, index=1)
    with pytest.raises(ValueError, match="not a known EntryKind"):
        message_from_pb(p)


@given(st.builds(HardState, u64, node_ids, u64))
def test_hard_state_round_trip(state: HardState) -> None:
    assert decode_hard_state(encode_hard_state(state)) == state
