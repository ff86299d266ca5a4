"""The node's Raft state in Redis, one key prefix per node (layout in `keys.py`).

The store keeps the log's bounds (start point and length) in memory so that a Ready
batch -- hard state plus entries, truncating a conflicting suffix if needed -- is one
MULTI/EXEC round trip with no read first.  That is sound because exactly one process
writes a node's prefix, and within it one lock orders every operation that uses the
bounds (a compaction task must not trim from a length a concurrent save just changed).
After any failed or cancelled write the outcome is unknown, so the cached bounds are
dropped and re-read before the next use.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from typing import TypeVar, cast

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from server.codec import decode_entry, encode_entry
from server.raft.types import Entry, HardState, Snapshot, SnapshotMeta

from .errors import CorruptLogError
from .keys import NodeKeys
from .log_bounds import check_range, compaction_drop, entries_to_store

T = TypeVar("T")

# Entries per LRANGE at boot: big enough that a long log takes few round trips,
# small enough that one reply stays a few hundred kilobytes.
DEFAULT_LOAD_CHUNK = 4096


class RedisRaftStorage:
    def __init__(
        self, client: Redis, keys: NodeKeys, *, load_chunk: int = DEFAULT_LOAD_CHUNK, owns_client: bool = False
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisRaftStorage needs a client with decode_responses=False: entries are bytes")
        if load_chunk < 1:
            raise ValueError(f"load_chunk must be positive, got {load_chunk}")
        self._redis = client
        self._keys = keys
        self._load_chunk = load_chunk
        self._owns_client = owns_client
        self._start: SnapshotMeta | None = None  # None: bounds unknown, read them before use
        self._length = 0
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls, url: str, *, cluster: str, node: str, load_chunk: int = DEFAULT_LOAD_CHUNK
    ) -> RedisRaftStorage:
        """A store with its own connection pool, closed by `close()`."""
        client = Redis.from_url(url, decode_responses=False)
        return cls(client, NodeKeys.for_node(cluster, node), load_chunk=load_chunk, owns_client=True)

    async def load_hard_state(self) -> HardState:
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.hard_state))
        if not fields:
            return HardState()
        return HardState(term=int(fields[b"term"]), vote=fields[b"vote"].decode(), commit=int(fields[b"commit"]))

    async def save_hard_state(self, hs: HardState) -> None:
        await self.save(hs, [])

    async def load(self) -> tuple[SnapshotMeta, list[Entry]]:
        async with self._lock:
            return await self._load()

    async def _load(self) -> tuple[SnapshotMeta, list[Entry]]:
        start, length = await self._read_bounds()
        entries: list[Entry] = []
        for pos in range(0, length, self._load_chunk):
            raw = cast(list[bytes], await self._redis.lrange(self._keys.log, pos, pos + self._load_chunk - 1))
            entries.extend(_decode(raw))
        if len(entries) != length:
            raise CorruptLogError(f"{self._keys.log}: LLEN said {length} entries, read {len(entries)}")
        for pos, entry in enumerate(entries):
            if entry.index != start.index + 1 + pos:
                raise CorruptLogError(
                    f"{self._keys.log}: position {pos} holds index {entry.index}, expected {start.index + 1 + pos}"
                )
        return start, entries

    async def append(self, entries: list[Entry]) -> None:
        await self.save(None, entries)

    async def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        async with self._lock:
            await self._save(hard_state, entries)

    async def _save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        start, length = await self._bounds()
        fresh = entries_to_store(entries, start.index, start.index + length)
        if hard_state is None and not fresh:
            return
        if hard_state is None and fresh[0].index == start.index + length + 1:
            await self._append(fresh, length)
            return
        pipe = self._redis.pipeline(transaction=True)
        if hard_state is not None:
            pipe.hset(self._keys.hard_state, mapping=_hard_state_fields(hard_state))
        keep = length
        if fresh:
            keep = fresh[0].index - start.index - 1
            if keep == 0 and length:
                pipe.delete(self._keys.log)  # LTRIM 0 -1 would keep everything
            elif keep < length:
                pipe.ltrim(self._keys.log, 0, keep - 1)
            pipe.rpush(self._keys.log, *map(encode_entry, fresh))
        await self._execute(pipe.execute())
        self._length = keep + len(fresh)

    async def _append(self, fresh: list[Entry], length: int) -> None:
        """The common Ready under load: entries after the last one, nothing else.  One
        RPUSH is atomic on its own, and costs a fraction of a MULTI/EXEC pipeline."""
        now = await self._execute(self._redis.rpush(self._keys.log, *map(encode_entry, fresh)))
        if now != length + len(fresh):
            self._start = None
            raise CorruptLogError(
                f"{self._keys.log}: holds {now} entries after appending {len(fresh)} to {length}: "
                "another process writes this node's keys; give every node its own CLUSTER_NAME/NODE_ID prefix"
            )
        self._length = now

    async def entries(self, lo: int, hi: int) -> list[Entry]:
        async with self._lock:
            return await self._entries(lo, hi)

    async def _entries(self, lo: int, hi: int) -> list[Entry]:
        start, length = await self._bounds()
        check_range(lo, hi, start.index + 1, start.index + length)
        if lo == hi:
            return []
        first = start.index + 1
        raw = cast(list[bytes], await self._redis.lrange(self._keys.log, lo - first, hi - first - 1))
        if len(raw) != hi - lo:
            raise CorruptLogError(f"{self._keys.log}: asked for {hi - lo} entries from {lo}, got {len(raw)}")
        return _decode(raw)

    async def first_index(self) -> int:
        async with self._lock:
            start, _ = await self._bounds()
        return start.index + 1

    async def last_index(self) -> int:
        async with self._lock:
            start, length = await self._bounds()
        return start.index + length

    async def compact(self, meta: SnapshotMeta) -> None:
        async with self._lock:
            await self._compact(meta)

    async def _compact(self, meta: SnapshotMeta) -> None:
        start, length = await self._bounds()
        if meta.index <= start.index:
            return
        at = meta.index - start.index - 1
        term_at_meta = None
        if at < length:
            raw = cast(bytes | None, await self._redis.lindex(self._keys.log, at))
            if raw is None:
                raise CorruptLogError(f"{self._keys.log}: no entry at position {at} of {length}")
            term_at_meta = _decode([raw])[0].term
        drop = compaction_drop(meta, start, length, term_at_meta)
        pipe = self._redis.pipeline(transaction=True)
        if drop >= length:
            pipe.delete(self._keys.log)
        elif drop:
            pipe.ltrim(self._keys.log, drop, -1)
        pipe.hset(self._keys.log_start, mapping=_log_start_fields(meta))
        await self._execute(pipe.execute())
        self._start, self._length = meta, length - drop

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._keys.snapshot)
        pipe.hset(self._keys.snapshot, mapping={**_log_start_fields(snapshot.meta), "data": snapshot.data})
        await pipe.execute()

    async def load_snapshot(self) -> Snapshot | None:
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.snapshot))
        if not fields:
            return None
        return Snapshot(_log_start(fields), fields[b"data"])

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def _bounds(self) -> tuple[SnapshotMeta, int]:
        if self._start is None:
            return await self._read_bounds()
        return self._start, self._length

    async def _read_bounds(self) -> tuple[SnapshotMeta, int]:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._keys.log_start)
        pipe.llen(self._keys.log)
        fields, length = await pipe.execute()
        self._start, self._length = _log_start(fields), int(length)
        return self._start, self._length

    async def _execute(self, write: Awaitable[T]) -> T:
        """Await a write; if it fails, its outcome is unknown: re-read the bounds next time."""
        try:
            return await write
        except BaseException:
            self._start = None  # the write may or may not have happened
            raise


def _decode(raw: list[bytes]) -> list[Entry]:
    try:
        return [decode_entry(b) for b in raw]
    except (DecodeError, ValueError) as exc:
        raise CorruptLogError(f"undecodable log entry: {exc}") from exc


def _hard_state_fields(hs: HardState) -> dict[FieldT, EncodableT]:
    return {"term": hs.term, "vote": hs.vote, "commit": hs.commit}


def _log_start_fields(meta: SnapshotMeta) -> dict[FieldT, EncodableT]:
    return {"index": meta.index, "term": meta.term, "voters": json.dumps(list(meta.voters))}


def _log_start(fields: Mapping[bytes, bytes]) -> SnapshotMeta:
    if not fields:
        return SnapshotMeta()
    voters = json.loads(fields[b"voters"])
    return SnapshotMeta(index=int(fields[b"index"]), term=int(fields[b"term"]), voters=tuple(voters))
