"""The order in which a bounded cache gives up its keys: LRU or LFU, one structure for both.

Keys sit in buckets by rank, each bucket in recency order (least recent first); the
victim is the least recent key of the lowest rank.  LFU ranks a key by its use count;
LRU ranks every key the same, which leaves one bucket in plain recency order.  Ties
between equally used keys under LFU go to the least recently used one.

Deterministic: the order depends only on the sequence of calls, so replicas making the
same calls evict the same keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal

Policy = Literal["lru", "lfu"]
POLICIES: tuple[Policy, ...] = ("lru", "lfu")


class EvictionOrder:
    def __init__(self, policy: Policy) -> None:
        if policy not in POLICIES:
            raise ValueError(f"eviction policy {policy!r}: choose one of {', '.join(POLICIES)}")
        self._by_uses = policy == "lfu"
        self._buckets: dict[int, OrderedDict[str, None]] = {}
        # The lowest rank with keys, or None when it must be looked up again (its bucket emptied).
        self._lowest: int | None = None

    def __iter__(self) -> Iterator[str]:
        """Every key, next victim first."""
        for rank in sorted(self._buckets):
            yield from self._buckets[rank]

    def add(self, key: str, uses: int) -> None:
        """`key` (absent) becomes the most recently used key with `uses` uses."""
        rank = self._rank(uses)
        self._buckets.setdefault(rank, OrderedDict())[key] = None
        if self._lowest is not None and rank < self._lowest:
            self._lowest = rank

    def use(self, key: str, before: int, after: int) -> None:
        """`key` was used again: its count went from `before` to `after`."""
        rank = self._rank(before)
        if rank == self._rank(after):
            self._buckets[rank].move_to_end(key)
        else:
            self.remove(key, before)
            self.add(key, after)

    def remove(self, key: str, uses: int) -> None:
        rank = self._rank(uses)
        bucket = self._buckets[rank]
        del bucket[key]
        if not bucket:
            del self._buckets[rank]
            if rank == self._lowest:
                self._lowest = None

    def victim(self) -> str:
        """The key to evict next; there must be one."""
        if self._lowest is None:
            self._lowest = min(self._buckets)
        return next(iter(self._buckets[self._lowest]))

    def _rank(self, uses: int) -> int:
        return uses if self._by_uses else 0
