"""Index arithmetic every log store must agree on, kept in one place so the twins cannot drift."""

from __future__ import annotations

from server.raft.types import Entry, SnapshotMeta

from .errors import CompactedError, UnavailableError


def entries_to_store(entries: list[Entry], start_index: int, last: int) -> list[Entry]:
    """What `append(entries)` must write, or ValueError if the batch would corrupt the log.

    The prefix at or below the log's start point is dropped: it is committed, so a
    snapshot already holds it.  A gap would break index == position + first_index.
    """
    if not entries:
        return entries
    start = entries[0].index
    for offset, entry in enumerate(entries):
        if entry.index != start + offset:
            raise ValueError(f"entries are not consecutive: index {entry.index} at offset {offset} after {start}")
    if start > last + 1:
        raise ValueError(f"gap in the log: appending index {start} after last index {last}")
    if start <= start_index:
        return entries[start_index + 1 - start :]
    return entries


def check_range(lo: int, hi: int, first: int, last: int) -> None:
    if lo > hi:
        raise ValueError(f"inverted range: lo={lo} > hi={hi}")
    if lo < first:
        raise CompactedError(f"entries before {first} are compacted (asked from {lo})")
    if hi > last + 1:
        raise UnavailableError(f"entries up to {last} only (asked up to {hi - 1})")


def compaction_drop(meta: SnapshotMeta, start: SnapshotMeta, length: int, term_at_meta: int | None) -> int:
    """How many leading entries `compact(meta)` removes from a log of `length` entries after `start`.

    Callers ignore a `meta` not newer than `start` before asking.  `term_at_meta` is the
    term of the stored entry at meta.index, None if not stored; the suffix survives
    only when that entry matches the snapshot (Raft §7).
    """
    if term_at_meta is not None and term_at_meta == meta.term:
        return meta.index - start.index
    return length
