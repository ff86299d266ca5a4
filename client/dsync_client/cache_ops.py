"""CacheService calls, and what their answers mean in Python."""

from __future__ import annotations

from dataclasses import dataclass

from dsync.v1 import cache_pb2

from .errors import VersionMismatch
from .ops import ConsistencyName, Op, consistency, method
from .values import JSON, from_value, to_value

PUT = method(cache_pb2.DESCRIPTOR, "CacheService", "Put", cache_pb2.PutResponse)
GET = method(cache_pb2.DESCRIPTOR, "CacheService", "Get", cache_pb2.GetResponse)
INVALIDATE = method(cache_pb2.DESCRIPTOR, "CacheService", "Invalidate", cache_pb2.InvalidateResponse)
COMPARE_AND_SET = method(cache_pb2.DESCRIPTOR, "CacheService", "CompareAndSet", cache_pb2.CompareAndSetResponse)


@dataclass(frozen=True)
class Entry:
    """A cached value and its version (the log index of the write that set it; pass it to
    compare_and_set).  `read_index` is the log index the answer reflects."""

    key: str
    value: JSON
    version: int
    read_index: int


@dataclass(frozen=True)
class Invalidated:
    """Whether the key held a value (and its version); `index` is the invalidation's log
    index: a read whose read_index reaches it no longer sees the old value."""

    existed: bool
    version: int
    index: int


def put(key: str, value: JSON, ttl: float) -> Op[cache_pb2.PutResponse, int]:
    request = cache_pb2.PutRequest(key=key, value=to_value(value), ttl=ttl)
    return Op(PUT, request, lambda r: r.version)


def get(key: str, read: ConsistencyName) -> Op[cache_pb2.GetResponse, Entry | None]:
    """None on a miss: never set, invalidated, expired or evicted."""
    request = cache_pb2.GetRequest(key=key, consistency=consistency(read))
    return Op(GET, request, lambda r: Entry(key, from_value(r.value), r.version, r.read_index) if r.found else None)


def invalidate(key: str) -> Op[cache_pb2.InvalidateResponse, Invalidated]:
    request = cache_pb2.InvalidateRequest(key=key)
    return Op(INVALIDATE, request, lambda r: Invalidated(r.existed, r.version, r.index))


def compare_and_set(
    key: str, expected_version: int, value: JSON, ttl: float
) -> Op[cache_pb2.CompareAndSetResponse, int]:
    request = cache_pb2.CompareAndSetRequest(key=key, expected_version=expected_version, value=to_value(value), ttl=ttl)
    return Op(COMPARE_AND_SET, request, lambda r: r.version, refine=VersionMismatch)
