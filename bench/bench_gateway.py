"""HTTP requests per second through the gateway of a real 3-node cluster, next to a bare
aiohttp echo server measured in the same run.

Each run starts a fresh cluster (`LocalCluster`: three `python -m server` processes, each
with its own private redis-server, appendfsync always) on free loopback ports.  Once a
leader is elected, `--clients` HTTP clients spread round-robin over the three nodes' HTTP
ports repeat the deployment guide's lock and cache calls in a closed loop, each client
on its own resource and key (plus one resource all of them hold shared):

    /lock/acquire exclusive -> /lock/release -> /lock/acquire shared -> /lock/release
    -> /cache/put -> /cache/get (hit) -> /cache/invalidate -> /cache/get (miss)

six writes through Raft and two linearizable reads per cycle.  Every answer must be 200;
anything else, or no answer within CALL_TIMEOUT_S, is an error.  The load generator is
aiohttp's client in its own process (so its CPU shows as a figure of its own), one
keep-alive connection per client.

The floor is `aiohttp_echo_floor`: a bare aiohttp server echoing a JSON body to the same
number of aiohttp clients in one process, measured just before each cluster starts.
Targets: >= 3,000 req/s with 0 errors, and >= 0.25 x the floor.  CPU use per process is
printed in cores over the measured window: on the 2-core machine the nodes, their
redis-servers and the load generator share the same two cores.

    .venv/bin/python -m bench.bench_gateway [--seconds 5] [--clients 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.measure import (
    cluster_pids,
    cpu_seconds,
    floor_and_others,
    free_ports,
    machine_busy_seconds,
    ms,
    percentiles,
    receive,
)
from bench.floors import aiohttp_echo_floor
from server.cluster import LocalCluster

NODES = 3
TARGET_RPS = 3000.0
TARGET_RATIO = 0.25
CALL_TIMEOUT_S = 5.0
LEADER_TIMEOUT_S = 30.0
ERROR_PAUSE_S = 0.01  # after a failed call, so a refusing node is not hammered
MACHINE = "machine"
OTHERS = "everything else"
# Beyond this many cores used by other processes, a run is flagged: its figures mean little.
DISTURBED_CORES = 0.25


def cycle(client: int, n: int) -> list[tuple[str, dict[str, Any]]]:
    """Client `client`'s n-th round of the guide's lock and cache calls."""
    mine, owner, key = f"r-{client}", f"c{client}", f"k-{client}"
    return [
        ("/lock/acquire", {"resource": mine, "owner": owner, "mode": "exclusive"}),
        ("/lock/release", {"resource": mine, "owner": owner}),
        ("/lock/acquire", {"resource": "shared", "owner": owner, "mode": "shared"}),
        ("/lock/release", {"resource": "shared", "owner": owner}),
        ("/cache/put", {"key": key, "value": {"x": n}}),
        ("/cache/get", {"key": key}),
        ("/cache/invalidate", {"key": key}),
        ("/cache/get", {"key": key}),
    ]


@dataclass
class Load:
    """What the load generator saw in the measured window."""

    seconds: float
    latencies: dict[str, list[float]]  # route -> seconds per call completed in the window
    errors: Counter[str]  # HTTP status (or exception name) -> failed calls in the window


@dataclass
class RunResult:
    rps: float
    p50: float
    p99: float
    by_route: dict[str, tuple[float, float]]
    errors: Counter[str]
    floor: float
    floor_others: float  # cores other processes used while the floor was measured
    cpu: dict[str, float]  # process label -> cores used in the window

    @property
    def ratio(self) -> float:
        return self.rps / self.floor

    @property
    def disturbed(self) -> bool:
        return max(self.floor_others, self.cpu[OTHERS]) > DISTURBED_CORES


async def generate(urls: list[str], clients: int, warmup: float, seconds: float, mark: Callable[[str], None]) -> Load:
    """Closed-loop cycles from `clients` coroutines; `mark` brackets the measured window."""
    latencies: dict[str, list[float]] = {path: [] for path, _ in cycle(0, 0)}
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        start = time.perf_counter() + warmup
        end = start + seconds

        async def client(n: int) -> None:
            base = urls[n % len(urls)]
            rounds = 0
            while time.perf_counter() < end:
                rounds += 1
                for path, body in cycle(n, rounds):
                    sent = time.perf_counter()
                    try:
                        async with http.post(base + path, json=body) as response:
                            await response.read()
                            failure = None if response.status == 200 else str(response.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        failure = type(exc).__name__
                    done = time.perf_counter()
                    if start <= done < end:
                        if failure is None:
                            latencies[path].append(done - sent)
                        else:
                            errors[failure] += 1
                    if failure is not None:
                        await asyncio.sleep(ERROR_PAUSE_S)
                        break  # start the cycle again: its calls depend on each other

        async def window() -> None:
            await asyncio.sleep(start - time.perf_counter())
            mark("start")
            await asyncio.sleep(end - time.perf_counter())
            mark("end")

        await asyncio.gather(window(), *(client(n) for n in range(clients)))
    return Load(seconds, latencies, errors)


def _loadgen_process(conn: Connection, urls: list[str], clients: int, warmup: float, seconds: float) -> None:
    try:
        conn.send(uvloop.run(generate(urls, clients, warmup, seconds, conn.send)))
    except Exception:
        conn.send(RuntimeError(f"load generator failed:\n{traceback.format_exc()}"))
    finally:
        conn.close()


async def run_load(
    urls: list[str], clients: int, warmup: float, seconds: float, mark: Callable[[str, int], None]
) -> Load:
    """`generate` in a spawned process; `mark(phase, pid)` at the window's edges."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_loadgen_process, args=(theirs, urls, clients, warmup, seconds), daemon=True)
    proc.start()
    theirs.close()
    assert proc.pid is not None
    try:
        for phase, timeout in (("start", LEADER_TIMEOUT_S + warmup), ("end", seconds + CALL_TIMEOUT_S)):
            got = await receive(ours, timeout)
            if got != phase:
                raise RuntimeError(f"load generator sent {got!r}, expected {phase!r}")
            mark(phase, proc.pid)
        load = await receive(ours, CALL_TIMEOUT_S + 10)
        assert isinstance(load, Load)
        return load
    finally:
        ours.close()
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join)


async def one_run(args: argparse.Namespace) -> RunResult:
    floor, floor_others = await floor_and_others(aiohttp_echo_floor, args.clients, args.seconds)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-gateway-") as data_dir:
        ports = free_ports(3 * NODES)
        cluster = LocalCluster(
            NODES,
            Path(data_dir),
            ports[:NODES],
            ports[NODES : 2 * NODES],
            ports[2 * NODES :],
            extra_env={"DOTENV": os.devnull, "LOG_LEVEL": "WARNING"},
        )
        try:
            await cluster.start()
            leader = await cluster.wait_for_leader(LEADER_TIMEOUT_S)
            pids = cluster_pids(cluster, leader)
            samples: dict[str, dict[str, float]] = {}

            def mark(phase: str, loadgen_pid: int) -> None:
                sample = {label: cpu_seconds(pid) for label, pid in pids.items()}
                sample["load generator"] = cpu_seconds(loadgen_pid)
                sample[MACHINE] = machine_busy_seconds()
                samples[phase] = sample

            load = await run_load([n.http_url for n in cluster], args.clients, args.warmup, args.seconds, mark)
            if await cluster.wait_for_leader(LEADER_TIMEOUT_S) != leader:
                print("  note: leadership moved during the run")
        finally:
            await cluster.stop()
    everything = [s for samples_ in load.latencies.values() for s in samples_]
    p50, p99 = percentiles(everything)
    used = {label: (samples["end"][label] - samples["start"][label]) / load.seconds for label in samples["end"]}
    machine = used.pop(MACHINE)
    used[OTHERS] = max(machine - sum(used.values()), 0.0)
    return RunResult(
        rps=len(everything) / load.seconds,
        p50=p50,
        p99=p99,
        by_route={route: percentiles(s) for route, s in load.latencies.items()},
        errors=load.errors,
        floor=floor,
        floor_others=floor_others,
        cpu=used,
    )


def print_run(n: int, runs: int, result: RunResult) -> None:
    errors = sum(result.errors.values())
    detail = f" ({', '.join(f'{k}: {v}' for k, v in result.errors.most_common())})" if errors else ""
    print(
        f"  run {n}/{runs}: {result.rps:7,.0f} req/s  p50 {ms(result.p50)}  p99 {ms(result.p99)}"
        f"  errors {errors}{detail}  floor {result.floor:7,.0f} req/s  ratio {result.ratio:4.2f}"
    )
    routes = "  ".join(
        f"{route} {ms(p50).strip()}/{ms(p99).strip()}" for route, (p50, p99) in result.by_route.items()
    )
    print(f"    p50/p99 by route: {routes}")
    used = "  ".join(f"{label} {cores:.2f}" for label, cores in result.cpu.items())
    print(f"    CPU, cores: {used}  (total {sum(result.cpu.values()):.2f} of {os.cpu_count()})")
    flag = f"  DISTURBED (> {DISTURBED_CORES} cores): the figures are unreliable" if result.disturbed else ""
    print(f"    while the floor was measured, other processes used {result.floor_others:.2f} cores{flag}")


def print_median(results: list[RunResult]) -> None:
    rps = statistics.median(r.rps for r in results)
    ratio = statistics.median(r.ratio for r in results)
    errors = sum(sum(r.errors.values()) for r in results)
    print(
        f"median of {len(results)}: {rps:,.0f} req/s  p50 {ms(statistics.median(r.p50 for r in results))}"
        f"  p99 {ms(statistics.median(r.p99 for r in results))}"
        f"  floor {statistics.median(r.floor for r in results):,.0f} req/s  ratio {ratio:.2f}  errors {errors}"
        f"  disturbed runs {sum(r.disturbed for r in results)}"
    )
    met_rps = rps >= TARGET_RPS and not errors
    print(
        f"  target >= {TARGET_RPS:,.0f} req/s with 0 errors: {'met' if met_rps else 'NOT met'};"
        f"  target ratio >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run, and the floor's")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window opens")
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients, spread over the nodes")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the nodes' data dirs go")
    args = parser.parse_args()
    if args.seconds <= 0 or args.warmup < 0 or args.clients < 1 or args.runs < 1:
        parser.error("need --seconds > 0, --warmup >= 0, --clients >= 1 and --runs >= 1")
    print(
        f"{NODES} nodes + {NODES} redis-servers + the load generator share {os.cpu_count()} CPUs;"
        f" {args.clients} HTTP clients, {args.warmup:g} s warm-up, {args.seconds:g} s window;"
        f" floor: aiohttp echo, {args.clients} clients and the server in one process"
    )
    results = []
    for n in range(1, args.runs + 1):
        results.append(await one_run(args))
        print_run(n, args.runs, results[-1])
    print_median(results)


if __name__ == "__main__":
    uvloop.run(main())
