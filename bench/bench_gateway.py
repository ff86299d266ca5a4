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
anything else, or no answer within CALL_TIMEOUT_S, is an error.  The load generator runs
in its own process (so its CPU shows as a figure of its own), one keep-alive connection
per client, through `bench.http_client`: on these two cores aiohttp's client would take
a fifth of the CPU from the nodes it measures.

The floor is `aiohttp_echo_floor`: a bare aiohttp server echoing a JSON body to the same
number of clients of the same kind in one process, measured just before each cluster starts.
Targets: >= 3,000 req/s with 0 errors, and >= 0.25 x the floor.  CPU use per process is
printed in cores over the measured window: on the 2-core machine the nodes, their
redis-servers and the load generator share the same two cores.

    .venv/bin/python -m bench.bench_gateway [--seconds 5] [--clients 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import uvloop

from bench.harness import (
    CALL_TIMEOUT_S,
    ERROR_PAUSE_S,
    LEADER_TIMEOUT_S,
    NODES,
    add_dir_option,
    report_window,
    running_cluster,
    windowed_in_process,
)
from bench.measure import (
    DISTURBED_CORES,
    OTHERS,
    CpuWindow,
    cluster_pids,
    floor_and_others,
    ms,
    percentiles,
    print_cpu,
)
from bench.floors import aiohttp_echo_floor
from bench.http_client import HttpConnection, HttpError

TARGET_RPS = 3000.0
TARGET_RATIO = 0.25


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
    start = time.perf_counter() + warmup
    end = start + seconds

    async def client(n: int) -> None:
        http = HttpConnection.to(urls[n % len(urls)])
        rounds = 0
        try:
            while time.perf_counter() < end:
                rounds += 1
                for path, body in cycle(n, rounds):
                    sent = time.perf_counter()
                    try:
                        async with asyncio.timeout(CALL_TIMEOUT_S):
                            status, _ = await http.post(path, json.dumps(body).encode())
                        failure = None if status == 200 else str(status)
                    except HttpError as exc:
                        failure = type(exc.__cause__).__name__
                    except TimeoutError:
                        failure = "TimeoutError"
                    done = time.perf_counter()
                    if start <= done < end:
                        if failure is None:
                            latencies[path].append(done - sent)
                        else:
                            errors[failure] += 1
                    if failure is not None:
                        await asyncio.sleep(ERROR_PAUSE_S)
                        break  # start the cycle again: its calls depend on each other
        finally:
            http.close()

    await asyncio.gather(report_window(start, end, mark), *(client(n) for n in range(clients)))
    return Load(seconds, latencies, errors)


async def one_run(args: argparse.Namespace) -> RunResult:
    floor, floor_others = await floor_and_others(aiohttp_echo_floor, args.clients, args.seconds)
    async with running_cluster(args.dir, "bench-gateway-", {"LOG_LEVEL": "WARNING"}) as (cluster, leader):
        cpu = CpuWindow(cluster_pids(cluster, leader), "load generator")
        work = partial(generate, [n.http_url for n in cluster], args.clients, args.warmup, args.seconds)
        load = await windowed_in_process(work, args.warmup, args.seconds, cpu.mark)
        if await cluster.wait_for_leader(LEADER_TIMEOUT_S) != leader:
            print("  note: leadership moved during the run")
    everything = [s for samples_ in load.latencies.values() for s in samples_]
    p50, p99 = percentiles(everything)
    return RunResult(
        rps=len(everything) / load.seconds,
        p50=p50,
        p99=p99,
        by_route={route: percentiles(s) for route, s in load.latencies.items()},
        errors=load.errors,
        floor=floor,
        floor_others=floor_others,
        cpu=cpu.cores(load.seconds),
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
    print_cpu(result.cpu, result.floor_others, result.disturbed, "the figures are unreliable")


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
    add_dir_option(parser)
    args = parser.parse_args()
    if args.seconds <= 0 or args.warmup < 0 or args.clients < 1 or args.runs < 1:
        parser.error("need --seconds > 0, --warmup >= 0, --clients >= 1 and --runs >= 1")
    print(
        f"{NODES} nodes + {NODES} redis-servers + the load generator share {os.cpu_count()} CPUs;"
        f" {args.clients} HTTP clients, {args.warmup:g} s warm-up, {args.seconds:g} s window;"
        f" floor: aiohttp echo server, {args.clients} clients of the same kind, all in one process"
    )
    results = []
    for n in range(1, args.runs + 1):
        results.append(await one_run(args))
        print_run(n, args.runs, results[-1])
    print_median(results)


if __name__ == "__main__":
    uvloop.run(main())
