"""Reads made replicated: the keys a node's Gets found, proposed in batches as cache
`Touch` commands.

Eviction ranks keys by use, and every replica must rank them alike, so a read can count
only once it is in the log.  Each node collects the keys its reads hit and, at most once
per `interval`, proposes them as one Touch.  Reads then shape LRU/LFU order on every
replica, for one small log entry per node per interval while reads happen -- and none
while the node serves no reads (no task runs then).

Best effort: a Touch that fails (no leader, overload) is dropped, not retried; a lost
use only makes eviction slightly less informed.  A batch holds at most MAX_TOUCH_KEYS
keys, the most recently read ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from google.protobuf import empty_pb2

from dsync.fsm.v1 import cache_pb2 as fsm_pb2
from dsync.v1 import common_pb2
from server.api.commands import Proposer, execute
from server.api.errors import ServiceError
from server.fsm.cache import MAX_TOUCH_KEYS
from server.replica.errors import ReplicaError

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.1  # seconds


class TouchBatcher:
    """Collects read keys and proposes them; `dropped` counts Touches given up on this node."""

    def __init__(self, replica: Proposer, interval: float = DEFAULT_INTERVAL, max_keys: int = MAX_TOUCH_KEYS) -> None:
        if interval <= 0 or not 1 <= max_keys <= MAX_TOUCH_KEYS:
            raise ValueError(f"interval must be positive seconds and max_keys within 1..{MAX_TOUCH_KEYS}")
        self._replica = replica
        self._interval = interval
        self._max_keys = max_keys
        self._keys: OrderedDict[str, None] = OrderedDict()  # least recently read first
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, key: str) -> None:
        """A read found `key`: it counts as used once the next Touch commits."""
        keys = self._keys
        keys[key] = None
        keys.move_to_end(key)
        if len(keys) > self._max_keys:
            keys.popitem(last=False)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cache-touches")

    async def _run(self) -> None:
        """Propose a Touch every interval until an interval passes without reads."""
        try:
            while self._keys:
                await asyncio.sleep(self._interval)
                keys, self._keys = list(self._keys), OrderedDict()
                await self._propose(keys)
        finally:
            self._task = None

    async def _propose(self, keys: list[str]) -> None:
        touch = fsm_pb2.CacheCommand(touch=fsm_pb2.CacheCommand.Touch(keys=keys))
        try:
            await execute(self._replica, "cache", touch, common_pb2.RequestHeader(), empty_pb2.Empty)
        except (ReplicaError, ServiceError) as exc:
            self.dropped += 1
            logger.debug("cache touch of %d keys dropped: %s", len(keys), exc)
