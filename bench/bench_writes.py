"""Writes per second and commit latency of a real 3-node loopback cluster, next to the
grpc.aio echo floor measured in the same run.

Each run starts a fresh cluster (`LocalCluster`: three `python -m server` processes, each
with its own private redis-server) on free loopback ports in a temporary directory, with
REDIS_APPENDFSYNC set to the mode under test.  Once a leader is elected, `--clients`
coroutines spread round-robin over the three nodes (one shared channel per node) call
CacheService.Put in a closed loop -- a 16-character string value, every key distinct,
each write stamped with its client's id and sequence as an SDK does -- through a warm-up
and then a measured window.  Latency is the client's view of one Put: forwarding by a
follower, replication, fsync per the mode, apply, and the answer.

The floor is `grpc_echo_floor` with the same number of callers (callers and server in
one process), measured just before each run's cluster starts.  Targets on the 2-core
machine: writes/s at least 0.6 x the floor's requests/s, and p99 at most 50 ms.

The load generator runs in its own process by default, so that its CPU shows as a figure
of its own and nothing else runs on its event loop; `--loadgen inline` runs it on the
benchmark's loop instead.  Either way it competes for the same CPUs as the three nodes and
their redis-servers, so every run prints what each of them used, in cores (CPU seconds per
second of the measured window, from /proc): the writes/s are what the nodes achieved on
what the load generator left them.  It also prints what everything else used, during the
window and during the floor: on a shared machine other people's work takes CPU from both,
not necessarily in the same measure, and a ratio from a disturbed run means little.

    .venv/bin/python -m bench.bench_writes [--seconds 5] [--clients 64] [--runs 3]
        [--modes always,everysec] [--loadgen process|inline] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
import uvloop

from bench.floors import grpc_echo_floor
from bench.harness import (
    CALL_TIMEOUT_S,
    ERROR_PAUSE_S,
    LEADER_TIMEOUT_S,
    NODES,
    add_dir_option,
    add_loadgen_option,
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
from dsync.v1 import cache_pb2, cache_pb2_grpc, common_pb2
from server.config import APPENDFSYNC_MODES

MODES = ("always", "everysec")
VALUE = "v" * 16
TARGET_RATIO = 0.6
TARGET_P99_S = 0.050


@dataclass
class Load:
    """What the load generator saw in the measured window."""

    seconds: float  # length of the window
    latencies: dict[str, list[float]]  # node address -> seconds per Put that completed in the window
    errors: Counter[str]  # gRPC status name -> failed Puts in the window


@dataclass
class RunResult:
    writes_per_s: float
    p50: float
    p99: float
    via_leader: tuple[float, float]  # p50, p99 of Puts sent to the leader
    via_followers: tuple[float, float]  # p50, p99 of Puts a follower forwarded
    errors: Counter[str]
    floor: float  # echo requests/s measured just before
    floor_others: float  # cores that other processes used while the floor was measured
    cpu: dict[str, float]  # process label -> cores used in the window, "everything else" included

    @property
    def ratio(self) -> float:
        return self.writes_per_s / self.floor

    @property
    def disturbed(self) -> bool:
        return max(self.floor_others, self.cpu[OTHERS]) > DISTURBED_CORES


# ---------------------------------------------------------------- load generator


async def generate(
    addresses: list[str], clients: int, warmup: float, seconds: float, mark: Callable[[str], None]
) -> Load:
    """Closed-loop Puts from `clients` coroutines; `mark("start")`/`mark("end")` bracket the window.

    The window counts Puts that complete inside it, so writes/s is exact and the Puts
    still in flight at either edge are left out rather than stretched over it.
    """
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), LEADER_TIMEOUT_S) for ch in channels))
        stubs = [cache_pb2_grpc.CacheServiceStub(ch) for ch in channels]
        latencies: dict[str, list[float]] = {address: [] for address in addresses}
        errors: Counter[str] = Counter()
        begin = time.perf_counter()
        start = begin + warmup
        end = start + seconds

        async def client(n: int) -> None:
            stub = stubs[n % len(stubs)]
            samples = latencies[addresses[n % len(addresses)]]
            value = struct_pb2.Value(string_value=VALUE)
            seq = 0
            while (sent := time.perf_counter()) < end:
                seq += 1
                header = common_pb2.RequestHeader(client_id=f"bench-{n}", sequence=seq)
                request = cache_pb2.PutRequest(header=header, key=f"c{n}-{seq}", value=value)
                try:
                    await stub.Put(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    if start <= time.perf_counter() < end:
                        errors[exc.code().name] += 1
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
                done = time.perf_counter()
                if start <= done < end:
                    samples.append(done - sent)

        await asyncio.gather(report_window(start, end, mark), *(client(n) for n in range(clients)))
        return Load(seconds, latencies, errors)
    finally:
        for ch in channels:
            await ch.close()


# ---------------------------------------------------------------- the cluster side


async def one_run(mode: str, args: argparse.Namespace, root: Path) -> RunResult:
    floor, floor_others = await floor_and_others(grpc_echo_floor, args.clients, args.seconds)
    async with running_cluster(root, f"bench-writes-{mode}-", {"REDIS_APPENDFSYNC": mode}) as (cluster, leader):
        cpu = CpuWindow(cluster_pids(cluster, leader), f"load generator ({args.loadgen})")
        work = partial(generate, [node.grpc_address for node in cluster], args.clients, args.warmup, args.seconds)
        if args.loadgen == "process":
            load = await windowed_in_process(work, args.warmup, args.seconds, cpu.mark)
        else:  # on this process's event loop, beside the code that watches the cluster
            load = await work(lambda phase: cpu.mark(phase, os.getpid()))
        leader_after = await cluster.wait_for_leader(LEADER_TIMEOUT_S)
        if leader_after != leader:
            print(f"  note: leadership moved from {leader} to {leader_after} during the run")
    leader_address = cluster.node(leader).grpc_address
    everything = [s for samples_ in load.latencies.values() for s in samples_]
    p50, p99 = percentiles(everything)
    forwarded = [s for address, samples_ in load.latencies.items() if address != leader_address for s in samples_]
    return RunResult(
        writes_per_s=len(everything) / load.seconds,
        p50=p50,
        p99=p99,
        via_leader=percentiles(load.latencies[leader_address]),
        via_followers=percentiles(forwarded),
        errors=load.errors,
        floor=floor,
        floor_others=floor_others,
        cpu=cpu.cores(load.seconds),
    )


# ---------------------------------------------------------------- reporting


def print_run(n: int, runs: int, result: RunResult) -> None:
    errors = sum(result.errors.values())
    detail = f" ({', '.join(f'{k} {v}' for k, v in result.errors.most_common())})" if errors else ""
    print(
        f"  run {n}/{runs}: {result.writes_per_s:8,.0f} writes/s  p50 {ms(result.p50)}  p99 {ms(result.p99)}"
        f"  errors {errors}{detail}  floor {result.floor:8,.0f} req/s  ratio {result.ratio:5.2f}"
    )
    print(
        f"    via leader p50/p99 {ms(result.via_leader[0])} / {ms(result.via_leader[1])};"
        f"  via followers {ms(result.via_followers[0])} / {ms(result.via_followers[1])}"
    )
    print_cpu(result.cpu, result.floor_others, result.disturbed, "the ratio is unreliable")


def print_median(mode: str, results: list[RunResult]) -> None:
    writes = statistics.median(r.writes_per_s for r in results)
    ratio = statistics.median(r.ratio for r in results)
    p99 = statistics.median(r.p99 for r in results)
    print(
        f"appendfsync={mode} median of {len(results)}: {writes:,.0f} writes/s"
        f"  p50 {ms(statistics.median(r.p50 for r in results))}  p99 {ms(p99)}"
        f"  floor {statistics.median(r.floor for r in results):,.0f} req/s  ratio {ratio:.2f}"
        f"  errors {sum(sum(r.errors.values()) for r in results)}"
        f"  disturbed runs {sum(r.disturbed for r in results)}"
    )
    print(
        f"  target ratio >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'};"
        f"  target p99 <= {TARGET_P99_S * 1000:.0f} ms: {'met' if p99 <= TARGET_P99_S else 'NOT met'}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run, and the floor's")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window opens")
    parser.add_argument("--clients", type=int, default=64, help="concurrent Put callers, spread over the nodes")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode; the median is reported")
    parser.add_argument("--modes", default=",".join(MODES), help="appendfsync modes, comma separated")
    add_loadgen_option(parser)
    add_dir_option(parser)
    args = parser.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in APPENDFSYNC_MODES:
            parser.error(f"unknown appendfsync mode {mode!r}; choose from {', '.join(APPENDFSYNC_MODES)}")
    if args.seconds <= 0 or args.warmup < 0 or args.clients < 1 or args.runs < 1:
        parser.error("need --seconds > 0, --warmup >= 0, --clients >= 1 and --runs >= 1")
    print(
        f"{NODES} nodes + {NODES} redis-servers + the load generator ({args.loadgen}) share {os.cpu_count()} CPUs;"
        f" {args.clients} clients, {len(VALUE)}-character string values,"
        f" {args.warmup:g} s warm-up, {args.seconds:g} s window;"
        f" floor: grpc.aio echo, {args.clients} callers and the server in one process, just before each cluster"
    )
    for mode in modes:
        print(f"appendfsync={mode}")
        results = []
        for n in range(1, args.runs + 1):
            results.append(await one_run(mode, args, args.dir))
            print_run(n, args.runs, results[-1])
        print_median(mode, results)


if __name__ == "__main__":
    uvloop.run(main())
