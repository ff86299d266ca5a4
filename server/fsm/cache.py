"""The replicated cache: JSON values under string keys, bounded, with TTLs.

A key's version is the log index of the write that set it, so versions grow with every
write and a compare-and-set needs no counter of its own.

Bounded by `max_entries` and `max_bytes` (key UTF-8 plus serialized value).  A write
that would pass either evicts other keys first, least recently (LRU) or least
frequently (LFU) used; the written key is always admitted.  Only replicated events
count as uses -- writes, and `Touch` commands carrying the reads a node served -- so
every replica ranks keys alike and evicts the same ones.  Configure the same limits
and policy on every node: they are part of that agreement.

TTLs run on state-machine time (`ApplyContext.now_ms`): an entry expires in the
`advance` that carries time past its deadline, on every replica at the same log index.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf import empty_pb2, struct_pb2
from google.protobuf.message import DecodeError

from dsync.fsm.v1 import cache_pb2 as fsm_pb2
from dsync.v1 import cache_pb2
from server.fsm.base import ApplyContext, Code, Refusal, Result
from server.fsm.eviction import EvictionOrder, Policy
from server.fsm.json_values import json_value_problem

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 1 << 20
MAX_TTL_MS = 30 * 24 * 60 * 60 * 1000
# A Touch is one log entry: enough keys to carry ~100 ms of a busy node's reads.
MAX_TOUCH_KEYS = 1024
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 256 << 20


class Hit(NamedTuple):
    value: bytes  # a serialized google.protobuf.Value
    version: int


@dataclass(slots=True)
class _Entry:
    value: bytes
    version: int
    expires_at_ms: int  # 0: never
    uses: int
    size: int  # what the entry counts against max_bytes


def key_problem(key: str) -> str | None:
    """Why `key` cannot be a cache key, or None if it can."""
    if not key:
        return "must not be empty"
    size = len(key.encode())
    if size > MAX_KEY_BYTES:
        return f"{size} bytes of UTF-8; keys are at most {MAX_KEY_BYTES} bytes"
    return None


class CacheMachine:
    """Implements `server.fsm.base.Component` for the "cache" service.

    `get` reads the replica's current state: the servicer decides how fresh it must be.
    `evictions` and `expirations` count what this process has seen applied (not part of
    the snapshot).
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        policy: Policy = "lru",
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries}: the cache must hold at least one entry")
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes}: the cache must hold at least one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.policy = policy
        self.evictions = 0
        self.expirations = 0
        self._entries: dict[str, _Entry] = {}
        self._order = EvictionOrder(policy)
        self._bytes = 0
        # (expires_at_ms, key, version), lazily deleted: an item whose key was since
        # rewritten or removed no longer matches the entry's version and is skipped.
        self._expiry: list[tuple[int, str, int]] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def get(self, key: str) -> Hit | None:
        """The key's value and version in this replica, or None; does not count as a use."""
        entry = self._entries.get(key)
        return None if entry is None else Hit(entry.value, entry.version)

    def keys(self) -> list[str]:
        """Every key, in eviction order (next victim first)."""
        return list(self._order)

    # ------------------------------------------------------------------ Component

    def apply(self, command: bytes, ctx: ApplyContext) -> Result:
        try:
            cmd = fsm_pb2.CacheCommand.FromString(command)
        except DecodeError:
            return Refusal(Code.INVALID_ARGUMENT, "not a cache command: it could not be decoded")
        op = cmd.WhichOneof("op")
        if op == "put":
            put = cmd.put
            refusal = self._check_write(put.key, put.value, put.ttl_ms)
            if refusal is not None:
                return refusal
            self._write(put.key, put.value, put.ttl_ms, ctx)
            return cache_pb2.PutResponse(version=ctx.index)
        if op == "compare_and_set":
            cas = cmd.compare_and_set
            refusal = self._check_write(cas.key, cas.value, cas.ttl_ms) or self._check_version(
                cas.key, cas.expected_version
            )
            if refusal is not None:
                return refusal
            self._write(cas.key, cas.value, cas.ttl_ms, ctx)
            return cache_pb2.CompareAndSetResponse(version=ctx.index)
        if op == "invalidate":
            return self._invalidate(cmd.invalidate.key, ctx)
        if op == "touch":
            return self._touch(cmd.touch.keys)
        return Refusal(Code.INVALID_ARGUMENT, "cache command names no operation")

    def advance(self, ctx: ApplyContext) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= ctx.now_ms:
            _, key, version = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.version == version:
                self._remove(key)
                self.expirations += 1

    def snapshot(self) -> bytes:
        snap = fsm_pb2.CacheSnapshot()
        for key in self._order:
            entry = self._entries[key]
            snap.entries.add(
                key=key,
                value=entry.value,
                version=entry.version,
                expires_at_ms=entry.expires_at_ms,
                uses=entry.uses,
            )
        return snap.SerializeToString(deterministic=True)

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        """Entries beyond this node's limits (a snapshot taken under larger ones) are
        evicted at once, in eviction order, so the limits hold from the first apply on."""
        twin = CacheMachine(self.max_entries, self.max_bytes, self.policy)
        twin._load(data)

        def install() -> None:
            self._entries, self._order, self._bytes, self._expiry = twin._entries, twin._order, twin._bytes, twin._expiry
            self.evictions += twin.evictions

        return install

    def _load(self, data: bytes) -> None:
        try:
            snap = fsm_pb2.CacheSnapshot.FromString(data)
        except DecodeError as exc:
            raise ValueError(f"corrupt cache snapshot: {exc}") from exc
        self._entries = {}
        self._order = EvictionOrder(self.policy)
        self._bytes = 0
        for item in snap.entries:
            if item.key in self._entries:
                raise ValueError(f"corrupt cache snapshot: key {item.key!r} appears twice")
            self._insert(
                item.key,
                _Entry(item.value, item.version, item.expires_at_ms, item.uses, _size(item.key, item.value)),
            )
        self._rebuild_expiry()
        self._make_room(entries=0, size=0)

    # ------------------------------------------------------------------ operations

    def _check_version(self, key: str, expected: int) -> Refusal | None:
        entry = self._entries.get(key)
        current = 0 if entry is None else entry.version
        if current == expected:
            return None
        if entry is None:
            what = f"key {key!r} does not exist (expected version {expected}): use expected_version 0 to create it"
        elif expected == 0:
            what = (
                f"key {key!r} exists at version {current} (expected_version 0 requires it absent): "
                f"read it, then retry with expected_version {current}"
            )
        else:
            what = f"key {key!r} is at version {current}, not {expected}: read it, then retry with expected_version {current}"
        return Refusal(Code.FAILED_PRECONDITION, what)

    def _check_write(self, key: str, value: bytes, ttl_ms: int) -> Refusal | None:
        problem = key_problem(key)
        if problem is not None:
            return Refusal(Code.INVALID_ARGUMENT, f"key: {problem}")
        if len(value) > MAX_VALUE_BYTES:
            return Refusal(Code.INVALID_ARGUMENT, f"value: {len(value)} bytes serialized; at most {MAX_VALUE_BYTES}")
        try:
            parsed = struct_pb2.Value.FromString(value)
        except DecodeError:
            return Refusal(Code.INVALID_ARGUMENT, "value: not a serialized google.protobuf.Value")
        if parsed.WhichOneof("kind") is None:
            return Refusal(Code.INVALID_ARGUMENT, "value: required (any JSON value, null included)")
        json_problem = json_value_problem(parsed)
        if json_problem is not None:
            return Refusal(Code.INVALID_ARGUMENT, f"value{json_problem[0]}: {json_problem[1]}")
        if ttl_ms > MAX_TTL_MS:
            return Refusal(Code.INVALID_ARGUMENT, f"ttl: {ttl_ms} ms; at most {MAX_TTL_MS} ms (30 days)")
        size = _size(key, value)
        if size > self.max_bytes:
            return Refusal(
                Code.INVALID_ARGUMENT,
                f"value: key and value take {size} bytes, more than the whole cache holds "
                f"(max_bytes {self.max_bytes}): store a smaller value",
            )
        return None

    def _write(self, key: str, value: bytes, ttl_ms: int, ctx: ApplyContext) -> None:
        """Store a checked write: make room by evicting other keys, then insert it as the newest use."""
        uses = 1
        if key in self._entries:
            uses += self._remove(key).uses  # a rewrite is a use: the key keeps its count
        entry = _Entry(value, ctx.index, ctx.now_ms + ttl_ms if ttl_ms else 0, uses, _size(key, value))
        self._make_room(entries=1, size=entry.size)
        self._insert(key, entry)
        if entry.expires_at_ms:
            self._schedule_expiry(key, entry.expires_at_ms, entry.version)

    def _invalidate(self, key: str, ctx: ApplyContext) -> Result:
        problem = key_problem(key)
        if problem is not None:
            return Refusal(Code.INVALID_ARGUMENT, f"key: {problem}")
        if key not in self._entries:
            return cache_pb2.InvalidateResponse(existed=False, index=ctx.index)
        removed = self._remove(key)
        return cache_pb2.InvalidateResponse(existed=True, version=removed.version, index=ctx.index)

    def _touch(self, keys: Sequence[str]) -> Result:
        if len(keys) > MAX_TOUCH_KEYS:
            return Refusal(Code.INVALID_ARGUMENT, f"touch: {len(keys)} keys; at most {MAX_TOUCH_KEYS} per command")
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                entry.uses += 1
                self._order.use(key, entry.uses - 1, entry.uses)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ bookkeeping

    def _insert(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._order.add(key, entry.uses)
        self._bytes += entry.size

    def _remove(self, key: str) -> _Entry:
        entry = self._entries.pop(key)
        self._order.remove(key, entry.uses)
        self._bytes -= entry.size
        return entry

    def _make_room(self, entries: int, size: int) -> None:
        """Evict until `entries` more entries of `size` bytes in all fit."""
        while self._entries and (
            len(self._entries) + entries > self.max_entries or self._bytes + size > self.max_bytes
        ):
            self._remove(self._order.victim())
            self.evictions += 1

    def _schedule_expiry(self, key: str, expires_at_ms: int, version: int) -> None:
        heap = self._expiry
        heapq.heappush(heap, (expires_at_ms, key, version))
        # Rewrites leave stale items behind; drop them once they outnumber the entries,
        # so the heap stays proportional to the cache whatever the write pattern.
        if len(heap) > 2 * len(self._entries) + 64:
            self._rebuild_expiry()

    def _rebuild_expiry(self) -> None:
        self._expiry = [(e.expires_at_ms, k, e.version) for k, e in self._entries.items() if e.expires_at_ms]
        heapq.heapify(self._expiry)


def _size(key: str, value: bytes) -> int:
    """What an entry counts against max_bytes: its key's UTF-8 and its serialized value."""
    return len(key.encode()) + len(value)
