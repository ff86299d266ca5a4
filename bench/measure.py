"""What every cluster benchmark measures the same way: ports, CPU use from /proc,
percentiles, the floor next to the other processes' load, and the load generator's pipe."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from multiprocessing.connection import Connection

from server.cluster import LocalCluster

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; held together so they are distinct."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle, over all CPUs (first line of /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


async def floor_and_others(
    floor: Callable[..., Awaitable[float]], clients: int, seconds: float
) -> tuple[float, float]:
    """The floor's requests/s, and the cores other processes used while it was measured."""
    busy, own, began = machine_busy_seconds(), time.process_time(), time.perf_counter()
    rate = await floor(clients=clients, seconds=seconds)
    elapsed = time.perf_counter() - began
    others = machine_busy_seconds() - busy - (time.process_time() - own)
    return rate, max(others, 0.0) / elapsed


def cluster_pids(cluster: LocalCluster, leader: str) -> dict[str, int]:
    """Label -> pid of every node and of its redis-server; the leader's label says so."""
    pids: dict[str, int] = {}
    for node in cluster:
        assert node.process is not None
        role = "leader" if node.name == leader else "follower"
        pids[f"{node.name} ({role})"] = node.process.pid
        pids[f"{node.name} redis"] = int((node.data_dir / "redis" / "redis-server.pid").read_text())
    return pids


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in seconds; NaN without enough samples."""
    if len(samples) < 2:
        return math.nan, math.nan
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"


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
