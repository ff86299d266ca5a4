"""What every cluster benchmark measures the same way: ports, CPU use from /proc over the
measured window (and how it is printed), percentiles, and the floor next to the other
processes' load."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Awaitable, Callable

from server.cluster import LocalCluster

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MACHINE = "machine"
# What the machine spent beyond the processes sampled: other people's work on a shared
# machine, the kernel's, and the benchmark's own bookkeeping.
OTHERS = "everything else"
# Beyond this many cores used by other processes, a run is flagged: its figures mean little.
DISTURBED_CORES = 0.25


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


class CpuWindow:
    """CPU seconds of the cluster's processes, the load generator and the whole machine at
    the measured window's edges: the cluster's figures are what it achieved on what it got."""

    def __init__(self, pids: dict[str, int], loadgen: str) -> None:
        self._pids = pids  # label -> pid, as `cluster_pids` gives them
        self._loadgen = loadgen  # the load generator's label
        self._samples: dict[str, dict[str, float]] = {}

    def mark(self, phase: str, loadgen_pid: int) -> None:
        """Sample at the window's "start" or "end"; the load generator says which, and its pid."""
        sample = {label: cpu_seconds(pid) for label, pid in self._pids.items()}
        sample[self._loadgen] = cpu_seconds(loadgen_pid)
        sample[_MACHINE] = machine_busy_seconds()
        self._samples[phase] = sample

    def cores(self, seconds: float) -> dict[str, float]:
        """Label -> cores used in a window of `seconds`; OTHERS is what the machine used beyond."""
        start, end = self._samples["start"], self._samples["end"]
        used = {label: (end[label] - start[label]) / seconds for label in end}
        machine = used.pop(_MACHINE)
        used[OTHERS] = max(machine - sum(used.values()), 0.0)
        return used


def print_cpu(cpu: dict[str, float], floor_others: float, disturbed: bool, unreliable: str) -> None:
    """Under a run's figures, what they were achieved on: each process's cores in the window,
    and the other processes' load while the floor was measured, `unreliable` said if either
    disturbed the run."""
    used = "  ".join(f"{label} {cores:.2f}" for label, cores in cpu.items())
    print(f"    CPU, cores: {used}  (total {sum(cpu.values()):.2f} of {os.cpu_count()})")
    flag = f"  DISTURBED (> {DISTURBED_CORES} cores): {unreliable}" if disturbed else ""
    print(f"    while the floor was measured, other processes used {floor_others:.2f} cores{flag}")


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in seconds; NaN without enough samples."""
    if len(samples) < 2:
        return math.nan, math.nan
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"

