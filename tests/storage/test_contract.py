"""The storage contract, run against the in-memory twin and the Redis store alike."""

from __future__ import annotations

import random

import pytest

from server.raft.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from server.storage.errors import CompactedError, UnavailableError

from .conftest import Stores
from .entries import span

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_fresh_node_starts_empty(stores: Stores) -> None:
    store = stores.open()
    assert await store.load() == (SnapshotMeta(), [])
    assert await store.load_hard_state() == HardState()
    assert (await store.first_index(), await store.last_index()) == (1, 0)
    assert await store.entries(1, 1) == []


async def test_the_newest_snapshot_survives_a_reopen_and_replaces_the_one_before(stores: Stores) -> None:
    store = stores.open()
    assert await store.load_snapshot() is None
    await store.save_snapshot(Snapshot(SnapshotMeta(4, 2, ("n1", "n2", "n3")), b"state at 4"))
    newer = Snapshot(SnapshotMeta(9, 3, ("n1", "n2")), bytes(range(256)) * 64)
    await store.save_snapshot(newer)
    await store.close()
    again = stores.open()
    assert await again.load_snapshot() == newer
    assert await again.load() == (SnapshotMeta(), [])  # the log is compacted separately
    assert await stores.open("n2").load_snapshot() is None  # per node


async def test_appended_entries_load_back_unchanged(stores: Stores) -> None:
    store = stores.open()
    odd = [Entry(2, 4, b"", EntryKind.NOOP), Entry(2, 5, bytes(range(256)))]
    await store.append(span(1, 3))
    await store.append(odd)
    assert await store.load() == (SnapshotMeta(), span(1, 3) + odd)
    assert (await store.first_index(), await store.last_index()) == (1, 5)


async def test_a_reopened_node_finds_everything_again(stores: Stores) -> None:
    first = stores.open()
    await first.save(HardState(3, "n2", 7), span(1, 9, term=3))
    await first.compact(SnapshotMeta(4, 3, ("n1", "n2", "n3")))
    await first.close()
    again = stores.open()
    assert await again.load() == (SnapshotMeta(4, 3, ("n1", "n2", "n3")), span(5, 9, term=3))
    assert await again.load_hard_state() == HardState(3, "n2", 7)
    assert (await again.first_index(), await again.last_index()) == (5, 9)
    assert await again.entries(6, 8) == span(6, 7, term=3)


async def test_append_truncates_a_conflicting_suffix(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 5, term=1))
    await store.append(span(3, 4, term=2))
    assert (await store.load())[1] == span(1, 2, term=1) + span(3, 4, term=2)
    assert await store.last_index() == 4
    assert await store.entries(1, 5) == span(1, 2, term=1) + span(3, 4, term=2)


async def test_append_can_replace_the_whole_log(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 5, term=1))
    await store.append(span(1, 2, term=3))
    assert (await store.load())[1] == span(1, 2, term=3)
    assert await store.last_index() == 2


async def test_append_overlapping_the_tail_keeps_the_log_contiguous(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 5))
    await store.append(span(4, 8))
    assert (await store.load())[1] == span(1, 8)


async def test_append_rejects_a_gap_and_changes_nothing(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 3))
    with pytest.raises(ValueError, match="gap"):
        await store.append(span(5, 6))
    with pytest.raises(ValueError, match="consecutive"):
        await store.append([Entry(1, 4), Entry(1, 6)])
    assert (await store.load())[1] == span(1, 3)


async def test_entries_returns_half_open_ranges(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 10))
    assert await store.entries(1, 11) == span(1, 10)
    assert await store.entries(4, 5) == span(4, 4)
    assert await store.entries(7, 11) == span(7, 10)
    assert await store.entries(6, 6) == []


async def test_entries_outside_the_log_raise(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 10))
    await store.compact(SnapshotMeta(3, 1))
    with pytest.raises(CompactedError):
        await store.entries(3, 5)
    with pytest.raises(UnavailableError):
        await store.entries(4, 12)
    with pytest.raises(ValueError):
        await store.entries(6, 5)


async def test_compact_drops_the_prefix_and_records_the_start_point(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 10, term=2))
    await store.compact(SnapshotMeta(6, 2, ("n1", "n2")))
    assert await store.load() == (SnapshotMeta(6, 2, ("n1", "n2")), span(7, 10, term=2))
    assert (await store.first_index(), await store.last_index()) == (7, 10)
    await store.append(span(11, 12, term=2))
    assert await store.entries(7, 13) == span(7, 12, term=2)


async def test_compact_to_the_last_entry_leaves_an_empty_log(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 4))
    await store.compact(SnapshotMeta(4, 1))
    assert await store.load() == (SnapshotMeta(4, 1), [])
    assert (await store.first_index(), await store.last_index()) == (5, 4)
    await store.append(span(5, 5))
    assert await store.entries(5, 6) == span(5, 5)


async def test_a_snapshot_beyond_the_log_replaces_it(stores: Stores) -> None:
    """InstallSnapshot from a leader far ahead: the log restarts after the snapshot."""
    store = stores.open()
    await store.append(span(1, 3))
    await store.compact(SnapshotMeta(20, 4, ("a", "b", "c")))
    assert await store.load() == (SnapshotMeta(20, 4, ("a", "b", "c")), [])
    assert (await store.first_index(), await store.last_index()) == (21, 20)
    with pytest.raises(ValueError, match="gap"):
        await store.append(span(22, 22, term=4))
    await store.append(span(21, 22, term=4))
    assert (await store.load())[1] == span(21, 22, term=4)


async def test_a_snapshot_that_conflicts_with_the_log_discards_all_of_it(stores: Stores) -> None:
    """Raft §7: entries after the snapshot survive only if the log agrees at its last index."""
    store = stores.open()
    await store.append(span(1, 8, term=1))
    await store.compact(SnapshotMeta(5, 2))
    assert await store.load() == (SnapshotMeta(5, 2), [])
    assert await store.last_index() == 5


async def test_a_stale_compaction_is_a_no_op(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 8))
    await store.compact(SnapshotMeta(5, 1))
    await store.compact(SnapshotMeta(3, 1))
    await store.compact(SnapshotMeta(5, 1, ("changed",)))
    assert await store.load() == (SnapshotMeta(5, 1), span(6, 8))


async def test_append_skips_entries_the_snapshot_already_holds(stores: Stores) -> None:
    store = stores.open()
    await store.append(span(1, 4))
    await store.compact(SnapshotMeta(4, 1))
    await store.append(span(2, 7))
    assert await store.load() == (SnapshotMeta(4, 1), span(5, 7))


async def test_hard_state_round_trips_and_overwrites(stores: Stores) -> None:
    store = stores.open()
    await store.save_hard_state(HardState(1, "n3", 0))
    assert await store.load_hard_state() == HardState(1, "n3", 0)
    await store.save_hard_state(HardState(2, "", 5))
    assert await store.load_hard_state() == HardState(2, "", 5)
    assert await store.load() == (SnapshotMeta(), [])


async def test_save_persists_hard_state_and_entries_together(stores: Stores) -> None:
    store = stores.open()
    await store.save(HardState(1, "n1", 0), span(1, 3))
    await store.save(None, span(4, 4))
    await store.save(HardState(2, "n2", 4), [])
    await store.save(None, [])
    await store.save(HardState(3, "n3", 4), span(3, 5, term=3))
    assert await store.load_hard_state() == HardState(3, "n3", 4)
    assert (await store.load())[1] == span(1, 2) + span(3, 5, term=3)


async def test_a_rejected_save_persists_neither_part(stores: Stores) -> None:
    store = stores.open()
    await store.save(HardState(1, "n1", 1), span(1, 2))
    with pytest.raises(ValueError):
        await store.save(HardState(9, "n9", 9), span(4, 5))
    assert await store.load_hard_state() == HardState(1, "n1", 1)
    assert (await store.load())[1] == span(1, 2)


async def test_node_ids_with_any_characters_survive(stores: Stores) -> None:
    voters = ("10.0.0.1:7000", "nœud*[2]", 'quote"d')
    store = stores.open(node="10.0.0.1:7000")
    await store.save(HardState(1, "nœud*[2]", 0), [])
    await store.compact(SnapshotMeta(3, 1, voters))
    assert await store.load() == (SnapshotMeta(3, 1, voters), [])
    assert (await store.load_hard_state()).vote == "nœud*[2]"


@pytest.mark.parametrize("seed", range(4))
async def test_random_histories_match_a_plain_list_model(stores: Stores, seed: int) -> None:
    """Appends that truncate, compactions (matching or not) and reads, checked after every step."""
    rng = random.Random(seed)
    store = stores.open()
    start, log = SnapshotMeta(), list[Entry]()
    term = 1
    for _ in range(60):
        last = start.index + len(log)
        op = rng.random()
        if op < 0.6:
            term += rng.random() < 0.3
            lo = rng.randint(max(1, start.index + 1 - 2), last + 1)
            batch = span(lo, lo + rng.randint(0, 6), term)
            await store.save(HardState(term, "n1", start.index), batch)
            batch = [e for e in batch if e.index > start.index]
            if batch:
                log = log[: batch[0].index - start.index - 1] + batch
        elif op < 0.8 and last > start.index:
            at = rng.randint(start.index + 1, last + 3)
            stored = log[at - start.index - 1].term if at <= last else None
            meta = SnapshotMeta(at, stored if stored and rng.random() < 0.8 else term + 1)
            await store.compact(meta)
            log = log[at - start.index :] if meta.term == stored else []
            start = meta
        else:
            lo = rng.randint(start.index + 1, last + 1)
            hi = rng.randint(lo, last + 1)
            assert await store.entries(lo, hi) == log[lo - start.index - 1 : hi - start.index - 1]
        assert await store.load() == (start, log)
        assert (await store.first_index(), await store.last_index()) == (start.index + 1, start.index + len(log))
