"""`python -m server`: run one dsync node configured from the environment (and `.env`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from dotenv import load_dotenv

from server import config
from server.node import StartupError, serve


async def _run(cfg: config.NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(cfg, stop)


def main() -> None:
    load_dotenv(os.environ.get("DOTENV", ".env"), override=False)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config.load()
    except config.ConfigError as exc:
        print(f"dsync: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(_run(cfg))
    except StartupError as exc:
        print(f"dsync: cannot start node {cfg.node_id}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
