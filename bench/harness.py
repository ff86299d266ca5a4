"""What every cluster benchmark runs the same way: a fresh cluster, the load generator in a
spawned process with the pipe it reports over, the timeouts they share, and the options
that say where the load generator and the nodes' data go."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar, cast

import uvloop

from server.cluster import LocalCluster, free_ports

NODES = 3
# A call slower than this counts as an error; it also bounds how long a run can overrun.
CALL_TIMEOUT_S = 5.0
LEADER_TIMEOUT_S = 30.0
# After a failed call a client pauses, so that a node refusing everything at once
# (no leader yet, overloaded) is not hammered by a loop that burns the CPU it shares.
ERROR_PAUSE_S = 0.01

T = TypeVar("T")
# A load generator: given where to send its reports, the coroutine that runs it to its result.
Work = Callable[[Callable[[Any], None]], Coroutine[Any, Any, T]]


@asynccontextmanager
async def running_cluster(parent: Path, prefix: str, env: dict[str, str]) -> AsyncIterator[tuple[LocalCluster, str]]:
    """A fresh cluster and its leader, in a data dir under `parent` that goes with it.

    No stray .env may change what is measured: the nodes get their defaults and `env`.
    """
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as data_dir:
        ports = free_ports(3 * NODES)
        cluster = LocalCluster(
            NODES,
            Path(data_dir),
            ports[:NODES],
            ports[NODES : 2 * NODES],
            ports[2 * NODES :],
            extra_env={"DOTENV": os.devnull, **env},
        )
        try:
            await cluster.start()
            yield cluster, await cluster.wait_for_leader(LEADER_TIMEOUT_S)
        finally:
            await cluster.stop()


def _serve(conn: Connection, work: Work[object]) -> None:
    """Entry point of the load generator's own process: its reports, then its result, over `conn`."""
    try:
        conn.send(uvloop.run(work(conn.send)))
    except Exception:
        conn.send(RuntimeError(f"load generator failed:\n{traceback.format_exc()}"))
    finally:
        conn.close()


@asynccontextmanager
async def spawned(work: Work[object]) -> AsyncIterator[tuple[Connection, int]]:
    """`work` in a spawned process (a fork would inherit this process's gRPC state): the pipe
    it reports over, and its pid, whose CPU is then a figure of its own."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(theirs, work), daemon=True)
    proc.start()
    theirs.close()
    assert proc.pid is not None  # set by start()
    try:
        yield ours, proc.pid
    finally:
        ours.close()
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join)


async def receive(conn: Connection, timeout: float) -> object:
    """The load generator's next report; its exception re-raised here."""
    try:
        if not await asyncio.to_thread(conn.poll, timeout):
            raise TimeoutError(f"the load generator sent nothing for {timeout:.0f} s")
        item = conn.recv()
    except EOFError:
        raise RuntimeError("the load generator process died without a word") from None
    if isinstance(item, Exception):
        raise item
    return item


async def report_window(start: float, end: float, report: Callable[[str], None]) -> None:
    """Inside a load generator: report "start" and "end" as `time.perf_counter()` passes them."""
    await asyncio.sleep(start - time.perf_counter())
    report("start")
    await asyncio.sleep(end - time.perf_counter())
    report("end")


async def windowed_in_process(work: Work[T], warmup: float, seconds: float, mark: Callable[[str, int], None]) -> T:
    """`work` in a spawned process, reporting "start" and "end" as its measured window opens
    and closes: `mark(phase, pid)` runs here at each, so the cluster is sampled on time."""
    async with spawned(work) as (conn, pid):
        # Start-up (interpreter, imports, connecting) plus the warm-up, then the window.
        for phase, timeout in (("start", LEADER_TIMEOUT_S + warmup), ("end", seconds + CALL_TIMEOUT_S)):
            got = await receive(conn, timeout)
            if got != phase:
                raise RuntimeError(f"load generator sent {got!r}, expected {phase!r}")
            mark(phase, pid)
        # After its reports, the one thing `_serve` sends is what `work` returned.
        return cast(T, await receive(conn, CALL_TIMEOUT_S + 10))


def add_loadgen_option(parser: argparse.ArgumentParser) -> None:
    """--loadgen: inline shows what the load generator costs when it shares the benchmark's loop."""
    parser.add_argument(
        "--loadgen", choices=("process", "inline"), default="process",
        help="run the callers in their own process, or on this benchmark's event loop",
    )  # fmt: skip


def add_dir_option(parser: argparse.ArgumentParser) -> None:
    """--dir: what an fsync costs depends on the file system the nodes write to."""
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the nodes' data dirs go")
