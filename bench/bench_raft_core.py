"""Committed entries per second through the Raft core alone: a 3-node cluster in one
process, messages passed by hand, no I/O.  The target is >= 100,000 entries/s on one
core, so that the core never limits the real system.

    .venv/bin/python -m bench.bench_raft_core [--seconds 3] [--batch 256] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import deque

import uvloop

from bench.floors import grpc_echo_floor
from server.raft import Config, Message, RaftCore, Role


def _cluster(batch_limit: int) -> dict[str, RaftCore]:
    ids = ("n1", "n2", "n3")
    return {
        nid: RaftCore(
            Config(nid, ids, max_entries_per_msg=batch_limit, max_inflight_msgs=64),
            random.Random(i),
        )
        for i, nid in enumerate(ids)
    }


def _pump(cores: dict[str, RaftCore], queue: deque[Message]) -> int:
    """Carry out every Ready and deliver every message until the cluster is quiet."""
    applied = 0
    busy = True
    while busy:
        busy = False
        for core in cores.values():
            while core.has_ready():
                busy = True
                rd = core.ready()
                queue.extend(rd.messages)
                applied += len(rd.committed)
                core.advance(rd)
        while queue:
            busy = True
            msg = queue.popleft()
            cores[msg.dst].step(msg)
    return applied


def measure(seconds: float, batch: int, payload: int) -> float:
    cores = _cluster(batch_limit=max(batch, 64))
    queue: deque[Message] = deque()
    while not any(c.role is Role.LEADER for c in cores.values()):
        for core in cores.values():
            core.tick()
        _pump(cores, queue)
    leader = next(c for c in cores.values() if c.role is Role.LEADER)
    data = b"x" * payload
    committed_before = leader.log.committed
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            leader.propose(data)
        _pump(cores, queue)
    elapsed = time.perf_counter() - started
    return (leader.log.committed - committed_before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=256, help="proposals per round")
    parser.add_argument("--payload", type=int, default=64, help="bytes per entry")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    floor = uvloop.run(grpc_echo_floor(seconds=args.seconds))
    for batch in (1, 16, args.batch):
        rates = [measure(args.seconds, batch, args.payload) for _ in range(args.runs)]
        median = statistics.median(rates)
        print(
            f"core 3 nodes batch={batch:4d}: median {median:10,.0f} entries/s "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.runs} runs)"
            f"  = {median / floor:6.1f} x grpc.aio echo floor ({floor:,.0f} req/s)"
        )


if __name__ == "__main__":
    main()
