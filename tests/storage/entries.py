"""Log entries for the storage tests."""

from __future__ import annotations

from server.raft.types import Entry


def span(lo: int, hi: int, term: int = 1) -> list[Entry]:
    """Entries lo..hi inclusive, ~100 bytes each, with data that names them (NUL bytes included)."""
    return [Entry(term, i, f"t{term}-i{i}\0".encode().ljust(100, b"\0")) for i in range(lo, hi + 1)]
