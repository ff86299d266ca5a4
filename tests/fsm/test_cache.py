"""The cache machine: versions are log indexes, TTLs run on state-machine time, CAS rules,
LRU/LFU eviction decided from replicated uses only, and exact snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from dsync.fsm.v1 import cache_pb2 as fsm_pb2
from dsync.v1 import cache_pb2
from server.fsm.base import ApplyContext, Code, Refusal, Result
from server.fsm.cache import MAX_KEY_BYTES, MAX_TOUCH_KEYS, MAX_TTL_MS, MAX_VALUE_BYTES, CacheMachine, Hit
from server.fsm.eviction import Policy
from server.fsm.protocols import restore


def encode(value: Any) -> bytes:
    return json_format.ParseDict(value, struct_pb2.Value()).SerializeToString(deterministic=True)


def put(key: str, value: Any = 1, ttl_ms: int = 0) -> bytes:
    op = fsm_pb2.CacheCommand.Put(key=key, value=encode(value), ttl_ms=ttl_ms)
    return fsm_pb2.CacheCommand(put=op).SerializeToString()


def cas(key: str, expected: int, value: Any = 1, ttl_ms: int = 0) -> bytes:
    op = fsm_pb2.CacheCommand.CompareAndSet(key=key, expected_version=expected, value=encode(value), ttl_ms=ttl_ms)
    return fsm_pb2.CacheCommand(compare_and_set=op).SerializeToString()


def invalidate(key: str) -> bytes:
    return fsm_pb2.CacheCommand(invalidate=fsm_pb2.CacheCommand.Invalidate(key=key)).SerializeToString()


def touch(*keys: str) -> bytes:
    return fsm_pb2.CacheCommand(touch=fsm_pb2.CacheCommand.Touch(keys=keys)).SerializeToString()


def _ignore(event: object) -> None:
    """No RPC waits on cache events."""


@dataclass
class Log:
    """Feeds a machine as the router would: one index per command, time moved by clock entries."""

    machine: CacheMachine
    index: int = 0
    now_ms: int = 0

    def apply(self, command: bytes) -> Result:
        self.index += 1
        return self.machine.apply(command, ApplyContext(self.index, self.now_ms, _ignore))

    def advance(self, ms: int) -> None:
        self.index += 1
        self.now_ms += ms
        self.machine.advance(ApplyContext(self.index, self.now_ms, _ignore))


def refused(result: Result, code: Code, *words: str) -> bool:
    return isinstance(result, Refusal) and result.code is code and all(w in result.message for w in words)


def size(key: str, value: Any) -> int:
    return len(key.encode()) + len(encode(value))


# ---------------------------------------------------------------------- versions and reads


def test_a_write_answers_with_its_log_index_as_the_version() -> None:
    log = Log(CacheMachine())
    assert log.apply(put("k", {"x": 1})) == cache_pb2.PutResponse(version=1)
    assert log.apply(put("other")) == cache_pb2.PutResponse(version=2)
    assert log.apply(put("k", [1, "two", None])) == cache_pb2.PutResponse(version=3)
    assert log.machine.get("k") == Hit(encode([1, "two", None]), 3)
    assert log.machine.get("missing") is None


def test_invalidate_removes_and_reports_what_it_removed() -> None:
    log = Log(CacheMachine())
    log.apply(put("k"))
    assert log.apply(invalidate("k")) == cache_pb2.InvalidateResponse(existed=True, version=1, index=2)
    assert log.machine.get("k") is None
    assert log.apply(invalidate("k")) == cache_pb2.InvalidateResponse(existed=False, index=3)
    assert len(log.machine) == 0 and log.machine.bytes_used == 0


# ---------------------------------------------------------------------- TTL


def test_an_entry_expires_when_state_machine_time_reaches_its_ttl() -> None:
    log = Log(CacheMachine())
    log.advance(5_000)
    log.apply(put("k", ttl_ms=1_000))
    log.advance(999)
    assert log.machine.get("k") is not None
    log.advance(1)
    assert log.machine.get("k") is None
    assert log.machine.expirations == 1


def test_a_rewrite_replaces_the_ttl_and_an_invalidated_key_does_not_expire_later() -> None:
    log = Log(CacheMachine())
    log.apply(put("forever", ttl_ms=100))
    log.apply(put("forever"))  # no ttl now
    log.apply(put("longer", ttl_ms=100))
    log.apply(put("longer", ttl_ms=1_000))
    log.apply(put("gone", ttl_ms=100))
    log.apply(invalidate("gone"))
    log.apply(put("gone"))  # same key, new entry without ttl
    log.advance(500)
    assert log.machine.get("forever") is not None
    assert log.machine.get("longer") is not None
    assert log.machine.get("gone") is not None
    log.advance(500)
    assert log.machine.get("longer") is None
    assert log.machine.expirations == 1


def test_many_rewrites_of_a_ttl_key_keep_the_expiry_heap_small() -> None:
    log = Log(CacheMachine())
    for _ in range(1_000):
        log.apply(put("hot", ttl_ms=MAX_TTL_MS))
    assert len(log.machine._expiry) <= 2 * len(log.machine) + 65


# ---------------------------------------------------------------------- compare-and-set


def test_compare_and_set_with_expected_version_zero_creates_only_an_absent_key() -> None:
    log = Log(CacheMachine())
    assert log.apply(cas("k", 0, "a")) == cache_pb2.CompareAndSetResponse(version=1)
    assert refused(log.apply(cas("k", 0, "b")), Code.FAILED_PRECONDITION, "exists at version 1", "expected_version 1")
    assert log.machine.get("k") == Hit(encode("a"), 1)


def test_compare_and_set_replaces_only_the_expected_version_and_names_the_current_one() -> None:
    log = Log(CacheMachine())
    log.apply(put("k", "a"))
    assert log.apply(cas("k", 1, "b")) == cache_pb2.CompareAndSetResponse(version=2)
    before = log.machine.snapshot()
    assert refused(log.apply(cas("k", 1, "c")), Code.FAILED_PRECONDITION, "at version 2, not 1", "expected_version 2")
    assert refused(log.apply(cas("absent", 7)), Code.FAILED_PRECONDITION, "does not exist", "expected_version 0")
    assert log.machine.snapshot() == before


# ---------------------------------------------------------------------- malformed commands


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (b"\xff\xff", ("not a cache command",)),
        (b"", ("names no operation",)),
        (put(""), ("key:", "empty")),
        (put("k" * (MAX_KEY_BYTES + 1)), ("key:", f"at most {MAX_KEY_BYTES}")),
        (invalidate(""), ("key:",)),
        (put("k", "v" * MAX_VALUE_BYTES), ("value:", f"at most {MAX_VALUE_BYTES}")),
        (put("k", ttl_ms=MAX_TTL_MS + 1), ("ttl:", "30 days")),
        (
            fsm_pb2.CacheCommand(put=fsm_pb2.CacheCommand.Put(key="k", value=b"\xff")).SerializeToString(),
            ("value:", "not a serialized"),
        ),
        (fsm_pb2.CacheCommand(put=fsm_pb2.CacheCommand.Put(key="k")).SerializeToString(), ("value:", "required")),
        (cas("", 0), ("key:",)),
        (touch(*[f"k{i}" for i in range(MAX_TOUCH_KEYS + 1)]), ("touch:", f"at most {MAX_TOUCH_KEYS}")),
    ],
)
def test_a_malformed_command_is_refused_and_changes_nothing(command: bytes, words: tuple[str, ...]) -> None:
    log = Log(CacheMachine())
    log.apply(put("k", "kept"))
    before = log.machine.snapshot()
    assert refused(log.apply(command), Code.INVALID_ARGUMENT, *words)
    assert log.machine.snapshot() == before


def test_an_entry_larger_than_the_whole_cache_is_refused_without_evicting_anything() -> None:
    log = Log(CacheMachine(max_bytes=100))
    log.apply(put("k", "kept"))
    assert refused(log.apply(put("big", "v" * 100)), Code.INVALID_ARGUMENT, "value:", "max_bytes 100")
    assert log.machine.keys() == ["k"] and log.machine.evictions == 0


@pytest.mark.parametrize(
    ("options", "words"),
    [({"max_entries": 0}, "max_entries"), ({"max_bytes": 0}, "max_bytes"), ({"policy": "fifo"}, "lru, lfu")],
)
def test_impossible_limits_are_refused_at_construction(options: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        CacheMachine(**options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- eviction


def test_lru_evicts_the_least_recently_written_key_when_entries_run_out() -> None:
    log = Log(CacheMachine(max_entries=3))
    for key in "abc":
        log.apply(put(key))
    log.apply(put("a", 2))  # a rewrite is a use: b is now the least recent
    log.apply(put("d"))
    assert log.machine.keys() == ["c", "a", "d"]
    assert log.machine.evictions == 1


def test_lru_evicts_as_many_keys_as_a_large_write_needs_bytes() -> None:
    limit = 3 * size("a", "x" * 20)
    log = Log(CacheMachine(max_bytes=limit))
    for key in "abc":
        log.apply(put(key, "x" * 20))
    assert log.machine.bytes_used == limit
    log.apply(put("d", "x" * 40))  # needs the room of two entries
    assert log.machine.keys() == ["c", "d"]
    assert log.machine.bytes_used == size("c", "x" * 20) + size("d", "x" * 40) <= limit
    assert log.machine.evictions == 2


def test_a_touch_counts_as_a_use_in_order_and_skips_absent_keys() -> None:
    log = Log(CacheMachine(max_entries=3))
    for key in "abc":
        log.apply(put(key))
    assert log.apply(touch("b", "gone", "a")) == empty_pb2.Empty()
    assert log.machine.keys() == ["c", "b", "a"]
    log.apply(put("d"))
    assert log.machine.keys() == ["b", "a", "d"]


def test_lfu_evicts_the_least_used_key_and_the_least_recent_among_equals() -> None:
    log = Log(CacheMachine(max_entries=3, policy="lfu"))
    for key in "abc":
        log.apply(put(key))
    log.apply(touch("a", "a", "b"))  # uses: a 3, b 2, c 1
    log.apply(put("d"))
    assert log.machine.get("c") is None
    log.apply(put("e"))  # d (1 use) goes, although b and a are older
    assert log.machine.keys() == ["e", "b", "a"]
    log.apply(touch("e"))  # e and b both 2 uses now; b is the less recent
    log.apply(put("f"))
    assert log.machine.keys() == ["f", "e", "a"]


def test_lfu_keeps_a_rewritten_keys_count_and_restarts_an_invalidated_one() -> None:
    log = Log(CacheMachine(max_entries=2, policy="lfu"))
    log.apply(put("a"))
    log.apply(put("a"))  # 2 uses
    log.apply(put("b"))  # 1 use
    log.apply(put("c"))  # evicts b
    assert log.machine.keys() == ["c", "a"]
    log.apply(invalidate("a"))
    log.apply(put("a"))  # back to 1 use, and the most recent
    log.apply(put("d"))
    assert log.machine.keys() == ["a", "d"]


def test_lfu_by_bytes_evicts_in_frequency_order() -> None:
    limit = 3 * size("a", "x" * 10)
    log = Log(CacheMachine(max_bytes=limit, policy="lfu"))
    for key in "abc":
        log.apply(put(key, "x" * 10))
    log.apply(touch("a", "c"))
    log.apply(put("d", "x" * 10))
    assert log.machine.keys() == ["d", "a", "c"]


# ---------------------------------------------------------------------- snapshots


def _busy(policy: Policy) -> Log:
    log = Log(CacheMachine(max_entries=4, policy=policy))
    for i, key in enumerate("abcdef"):
        log.apply(put(key, i, ttl_ms=1_000 * (i % 3)))
    log.apply(touch("c", "c", "d"))
    log.advance(500)
    return log


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_a_restored_snapshot_gives_identical_behaviour_afterwards(policy: Policy) -> None:
    original = _busy(policy)
    copy = Log(CacheMachine(max_entries=4, policy=policy), original.index, original.now_ms)
    copy.apply(put("to be replaced"))
    copy.index = original.index
    restore(copy.machine, original.machine.snapshot())
    assert copy.machine.snapshot() == original.machine.snapshot()
    assert copy.machine.keys() == original.machine.keys()
    for log in (original, copy):
        log.apply(touch("d"))
        log.apply(put("g"))
        log.apply(put("h", ttl_ms=10))
        log.advance(1_000)
        log.apply(put("i"))
    assert copy.machine.snapshot() == original.machine.snapshot()
    assert copy.machine.keys() == original.machine.keys()
    assert [copy.machine.get(k) for k in "abcdefghi"] == [original.machine.get(k) for k in "abcdefghi"]


def test_restoring_under_smaller_limits_evicts_down_to_them_in_eviction_order() -> None:
    original = _busy("lru")
    order = original.machine.keys()
    small = CacheMachine(max_entries=2)
    restore(small, original.machine.snapshot())
    assert small.keys() == order[-2:]


def test_a_corrupt_snapshot_is_reported() -> None:
    with pytest.raises(ValueError, match="corrupt cache snapshot"):
        restore(CacheMachine(), b"\xff\xff")
    twice = fsm_pb2.CacheSnapshot(entries=[fsm_pb2.CacheEntry(key="k"), fsm_pb2.CacheEntry(key="k")])
    with pytest.raises(ValueError, match="appears twice"):
        restore(CacheMachine(), twice.SerializeToString())


# ---------------------------------------------------------------------- properties

KEYS = "abcdef"
MAX_ENTRIES = 4
MAX_BYTES = 60


@dataclass
class _ModelEntry:
    value: bytes
    version: int
    expires_at_ms: int
    uses: int
    last_use: int


@dataclass
class Model:
    """The cache spelled out by brute force: victim = min (rank, last use) over all entries."""

    policy: Policy
    entries: dict[str, _ModelEntry] = field(default_factory=dict)
    clock: int = 0  # counts uses, to order them

    def rank(self, key: str) -> tuple[int, int]:
        entry = self.entries[key]
        return (entry.uses if self.policy == "lfu" else 0, entry.last_use)

    def order(self) -> list[str]:
        return sorted(self.entries, key=self.rank)

    def use(self, key: str) -> None:
        self.clock += 1
        self.entries[key].uses += 1
        self.entries[key].last_use = self.clock

    def write(self, key: str, value: bytes, ttl_ms: int, index: int, now_ms: int) -> None:
        old = self.entries.pop(key, None)
        used = sum(len(k) + len(e.value) for k, e in self.entries.items())
        while self.entries and (len(self.entries) + 1 > MAX_ENTRIES or used + len(key) + len(value) > MAX_BYTES):
            victim = min(self.entries, key=self.rank)
            used -= len(victim) + len(self.entries.pop(victim).value)
        self.clock += 1
        uses = old.uses + 1 if old else 1
        self.entries[key] = _ModelEntry(value, index, now_ms + ttl_ms if ttl_ms else 0, uses, self.clock)

    def step(self, op: tuple[str, ...], index: int, now_ms: int) -> object:
        """What the machine must answer (a version, True/False for invalidate, None for a refusal)."""
        kind = op[0]
        if kind == "put":
            self.write(op[1], encode(op[2]), int(op[3]), index, now_ms)
            return index
        if kind == "cas":
            current = self.entries[op[1]].version if op[1] in self.entries else 0
            expected = current if op[2] == "current" else 0 if op[2] == "absent" else current + 1
            if expected != current:
                return None
            self.write(op[1], encode(op[3]), 0, index, now_ms)
            return index
        if kind == "invalidate":
            return self.entries.pop(op[1], None) is not None
        if kind == "touch":
            for key in op[1:]:
                if key in self.entries:
                    self.use(key)
            return "touched"
        for key in [k for k, e in self.entries.items() if e.expires_at_ms and e.expires_at_ms <= now_ms]:
            del self.entries[key]
        return "advanced"


keys = st.sampled_from(KEYS)
values = st.builds(lambda n, c: c * n, st.integers(0, 30), st.sampled_from("xyz"))
ops = st.one_of(
    st.tuples(st.just("put"), keys, values, st.sampled_from(["0", "50", "200"])),
    st.tuples(st.just("cas"), keys, st.sampled_from(["current", "absent", "wrong"]), values),
    st.tuples(st.just("invalidate"), keys),
    st.lists(keys, max_size=4).map(lambda ks: ("touch", *ks)),
    st.tuples(st.just("advance"), st.sampled_from(["10", "100"])),
)


def _run(log: Log, op: tuple[str, ...]) -> object:
    """Apply `op` to the machine and translate its answer into the model's terms."""
    machine = log.machine
    kind = op[0]
    if kind == "advance":
        log.advance(int(op[1]))
        return "advanced"
    if kind == "put":
        result = log.apply(put(op[1], op[2], int(op[3])))
    elif kind == "cas":
        hit = machine.get(op[1])
        current = hit.version if hit else 0
        expected = current if op[2] == "current" else 0 if op[2] == "absent" else current + 1
        result = log.apply(cas(op[1], expected, op[3]))
    elif kind == "invalidate":
        result = log.apply(invalidate(op[1]))
        assert isinstance(result, cache_pb2.InvalidateResponse)
        return result.existed
    else:
        assert log.apply(touch(*op[1:])) == empty_pb2.Empty()
        return "touched"
    if isinstance(result, Refusal):
        assert result.code is Code.FAILED_PRECONDITION, result
        return None
    assert isinstance(result, cache_pb2.PutResponse | cache_pb2.CompareAndSetResponse)
    return result.version


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["lru", "lfu"]), st.lists(ops, max_size=60))
def test_the_machine_behaves_like_the_brute_force_model(policy: Policy, batch: list[tuple[str, ...]]) -> None:
    log = Log(CacheMachine(max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES, policy=policy))
    model = Model(policy)
    for op in batch:
        answer = _run(log, op)
        assert answer == model.step(op, log.index, log.now_ms), op
        assert log.machine.keys() == model.order(), op
        for key, entry in model.entries.items():
            assert log.machine.get(key) == Hit(entry.value, entry.version)
        assert log.machine.bytes_used == sum(len(k) + len(e.value) for k, e in model.entries.items())
        assert len(log.machine) <= MAX_ENTRIES and log.machine.bytes_used <= MAX_BYTES


raw_commands = st.one_of(
    st.builds(put, keys, values, st.sampled_from([0, 50, 200])),
    st.builds(cas, keys, st.integers(0, 8), values),
    st.builds(invalidate, keys),
    st.lists(keys, max_size=4).map(lambda ks: touch(*ks)),
    st.binary(max_size=8),  # mostly malformed
    st.integers(1, 150),  # a clock entry moving time by that many ms
)


def _feed(log: Log, commands: list[bytes | int]) -> list[Result | None]:
    results: list[Result | None] = []
    for command in commands:
        if isinstance(command, int):
            log.advance(command)
            results.append(None)
        else:
            results.append(log.apply(command))
    return results


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["lru", "lfu"]), st.lists(raw_commands, max_size=60))
def test_replicas_fed_the_same_commands_hold_the_same_state_and_snapshot_bytes(
    policy: Policy, commands: list[bytes | int]
) -> None:
    one, two = (Log(CacheMachine(max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES, policy=policy)) for _ in range(2))
    assert _feed(one, commands) == _feed(two, commands)
    assert one.machine.snapshot() == two.machine.snapshot()
    assert one.machine.keys() == two.machine.keys()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["lru", "lfu"]), st.lists(raw_commands, max_size=40), st.lists(raw_commands, max_size=30))
def test_a_snapshot_taken_anywhere_restores_a_replica_that_then_behaves_identically(
    policy: Policy, before: list[bytes | int], after: list[bytes | int]
) -> None:
    original = Log(CacheMachine(max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES, policy=policy))
    _feed(original, before)
    copy = Log(CacheMachine(max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES, policy=policy), original.index, original.now_ms)
    restore(copy.machine, original.machine.snapshot())
    assert _feed(copy, after) == _feed(original, after)
    assert copy.machine.snapshot() == original.machine.snapshot()
