"""The internal key-value machine: deterministic results, error results, exact snapshots."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.fsm.protocols import restore
from tests.replica.kv_machine import MAX_KEY_BYTES, KvError, KvStateMachine, encode_delete, encode_put

keys = st.text(max_size=12)
commands = st.one_of(
    st.builds(encode_put, keys, st.binary(max_size=16)),
    st.builds(encode_delete, keys),
    st.binary(max_size=12),  # mostly malformed
)


def test_put_answers_with_the_writing_index_and_delete_with_the_old_version() -> None:
    kv = KvStateMachine()
    assert kv.apply(3, encode_put("a", b"1")) == 3
    assert kv.apply(7, encode_put("a", b"2")) == 7
    assert kv.get("a") == (b"2", 7)
    assert kv.apply(8, encode_delete("a")) == 7
    assert kv.apply(9, encode_delete("a")) == 0
    assert kv.get("a") is None


def test_keys_and_values_may_hold_any_text_and_bytes() -> None:
    kv = KvStateMachine()
    kv.apply(1, encode_put("ключ/🔑", b"\x00\xff"))
    kv.apply(2, encode_put("", b""))
    assert kv.get("ключ/🔑") == (b"\x00\xff", 1)
    assert kv.get("") == (b"", 2)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (b"", "empty"),
        (b"X\x00\x01a", "unknown operation"),
        (b"P\x00", "too short"),
        (b"P\x00\x05ab", "runs past"),
        (b"P\x00\x01\xff", "UTF-8"),
        (b"D\x00\x01ab", "after its key"),
    ],
)
def test_a_malformed_command_is_an_error_result_that_changes_nothing(command: bytes, reason: str) -> None:
    kv = KvStateMachine()
    kv.apply(1, encode_put("a", b"1"))
    before = kv.snapshot()
    result = kv.apply(2, command)
    assert isinstance(result, KvError) and reason in result.reason
    assert kv.snapshot() == before


def test_an_oversized_key_is_refused_before_it_is_proposed() -> None:
    with pytest.raises(ValueError, match="at most"):
        encode_put("k" * (MAX_KEY_BYTES + 1), b"")


@given(st.lists(commands, max_size=30))
def test_the_same_commands_give_the_same_results_and_snapshot_bytes(batch: list[bytes]) -> None:
    one, two = KvStateMachine(), KvStateMachine()
    assert [one.apply(i, c) for i, c in enumerate(batch, 1)] == [two.apply(i, c) for i, c in enumerate(batch, 1)]
    assert one.snapshot() == two.snapshot()


@given(st.lists(commands, max_size=30), st.lists(commands, max_size=10))
def test_a_restored_snapshot_behaves_exactly_like_the_original(before: list[bytes], after: list[bytes]) -> None:
    original = KvStateMachine()
    for i, command in enumerate(before, 1):
        original.apply(i, command)
    copy = KvStateMachine()
    copy.apply(1, encode_put("to be replaced", b""))
    restore(copy, original.snapshot())
    assert copy.snapshot() == original.snapshot()
    start = len(before) + 1
    assert [copy.apply(i, c) for i, c in enumerate(after, start)] == [
        original.apply(i, c) for i, c in enumerate(after, start)
    ]


@pytest.mark.parametrize("data", [b"", b"XX1\x00\x00\x00\x00", b"KV1\x00\x00\x00\x01\x00", b"KV1\x00\x00\x00\x00junk"])
def test_a_corrupt_snapshot_is_refused_and_the_state_kept(data: bytes) -> None:
    kv = KvStateMachine()
    kv.apply(1, encode_put("a", b"1"))
    with pytest.raises(ValueError, match="snapshot"):
        restore(kv, data)
    assert kv.get("a") == (b"1", 1)
