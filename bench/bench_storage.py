"""How fast the replication hot path persists: RedisRaftStorage.save() against the embedded redis-server.

For each appendfsync mode it prints save() calls/s and entries/s for batches of 1, 16
and 256 entries of ~100 bytes (each call also saves a hard state, as a follower's
Ready usually does), next to a floor: raw redis-py PING round trips/s in the same
run.  The ratio says how much of a round trip's budget a save spends.

    .venv/bin/python -m bench.bench_storage [--seconds 1] [--modes always,everysec] [--dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import get_args

import uvloop
from redis.asyncio import Redis

from server.raft.types import Entry, HardState
from server.storage.embedded_redis import AppendFsync, EmbeddedRedis
from server.storage.redis_store import RedisRaftStorage

BATCHES = (1, 16, 256)
PAYLOAD = b"x" * 100


async def ping_rate(url: str, seconds: float) -> float:
    async with Redis.from_url(url) as client:
        await client.ping()
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            await client.ping()
            calls += 1
        return calls / elapsed


async def save_rate(url: str, node: str, batch: int, seconds: float) -> float:
    store = RedisRaftStorage.from_url(url, cluster="bench", node=node)
    try:
        await store.load()
        index, calls, start = 0, 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            entries = [Entry(1, index + i, PAYLOAD) for i in range(1, batch + 1)]
            await store.save(HardState(1, "n1", index), entries)
            index += batch
            calls += 1
        return calls / elapsed
    finally:
        await store.close()


async def bench_mode(mode: AppendFsync, root: Path, seconds: float) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=f"bench-{mode}-") as data_dir:
        async with EmbeddedRedis(data_dir, appendfsync=mode) as server:
            pings = await ping_rate(server.url, seconds)
            print(f"appendfsync={mode}  (data dir {data_dir})")
            print(f"  {'PING floor':<18} {pings:>9,.0f} round trips/s")
            for batch in BATCHES:
                calls = await save_rate(server.url, f"{mode}-{batch}", batch, seconds)
                print(
                    f"  save() x{batch:<4} {'':>6} {calls:>9,.0f} calls/s  {calls * batch:>11,.0f} entries/s"
                    f"  {calls / pings:6.2f} x PING rate"
                )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of each measurement")
    parser.add_argument("--modes", default="always,everysec", help="appendfsync modes, comma separated")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where data dirs go")
    args = parser.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in get_args(AppendFsync):
            parser.error(f"unknown appendfsync mode {mode!r}; choose from {', '.join(get_args(AppendFsync))}")
    for mode in modes:
        await bench_mode(mode, args.dir, args.seconds)


if __name__ == "__main__":
    uvloop.run(main())
