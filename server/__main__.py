"""`python -m server`: run one dsync node configured from the environment (and `.env`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

import uvloop
from dotenv import load_dotenv

from server import config
from server.node import NodeFailed, StartupError, serve

# Middle-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 100


async def _run(cfg: config.NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(cfg, stop)


def main() -> None:
    try:
        load_dotenv(os.environ.get("DOTENV", ".env"), override=False)
        level = os.environ.get("LOG_LEVEL", "INFO").strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise config.ConfigError(f"LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING or ERROR")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = config.load()
    except UnicodeDecodeError as exc:
        print(f"dsync: configuration error: the .env file is not UTF-8 text ({exc})", file=sys.stderr)
        sys.exit(2)
    except config.ConfigError as exc:
        print(f"dsync: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    # A full collection walks every live object -- the log, the cache, the sessions -- and
    # pauses the node for tens of milliseconds, which lands on request latency.  What is
    # imported by now lives as long as the process, so it is moved out of the collector's
    # sight, and full collections run a tenth as often as by default.  The node's state
    # is freed by reference counting; only reference cycles wait for a full collection.
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    try:
        # uvloop: the node is CPU-bound under load, and libuv's loop leaves it about an
        # eighth more writes/s than asyncio's own (bench_writes, docs/design.md).
        uvloop.run(_run(cfg))
    except StartupError as exc:
        print(f"dsync: cannot start node {cfg.node_id}: {exc}", file=sys.stderr)
        sys.exit(2)
    except NodeFailed as exc:
        print(f"dsync: node {cfg.node_id} stopped: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
