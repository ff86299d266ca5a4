"""Run a local dsync cluster: N node processes, each with its own private Redis and data dir.

    python -m server.cluster                 # 3 nodes on the deployment guide's ports
    python -m server.cluster --nodes 5 --data-dir /tmp/dsync

Waits until a leader is elected, prints every node's endpoints, and stops everything
cleanly on Ctrl-C or SIGTERM; killed outright, on Linux it leaves no node behind
either.  A node that dies is reported; the others keep serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from server.raft.quorum import majority
from server.children import die_with_parent, log_tail


def free_ports(count: int) -> list[int]:
    """Loopback ports the kernel just handed out, held together so they are distinct: for
    clusters that must not collide with others started alongside (tests, benchmarks)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@dataclass
class NodeProcess:
    name: str
    grpc_port: int
    http_port: int
    metrics_port: int
    data_dir: Path
    process: asyncio.subprocess.Process | None = None
    wanted: bool = False  # started by us and not yet stopped or killed on purpose
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "node.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class LocalCluster:
    """Starts, stops, kills and restarts node processes on loopback."""

    def __init__(
        self,
        nodes: int,
        data_dir: Path,
        grpc_ports: list[int],
        http_ports: list[int],
        metrics_ports: list[int],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.nodes = [
            NodeProcess(f"node{i + 1}", grpc_ports[i], http_ports[i], metrics_ports[i], data_dir / f"node{i + 1}")
            for i in range(nodes)
        ]

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self.nodes)

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def env_for(self, node: NodeProcess) -> dict[str, str]:
        peers = ",".join(f"{n.name}=http://{n.grpc_address};http={n.http_url}" for n in self.nodes if n is not node)
        env = dict(os.environ)
        env.pop("REDIS_URL", None)  # each node starts its own private redis-server
        env.update(
            NODE_ID=node.name,
            SELF_URL=f"http://{node.grpc_address}",
            PEERS=peers,
            QUORUM=str(majority(len(self.nodes))),
            GRPC_PORT=str(node.grpc_port),
            HTTP_PORT=str(node.http_port),
            METRICS_PORT=str(node.metrics_port),
            DATA_DIR=str(node.data_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    async def start(self, name: str | None = None) -> None:
        for node in self.nodes if name is None else [self.node(name)]:
            if node.running:
                continue
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.wanted = True
            with open(node.log_path, "ab") as log:
                node.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "server",
                    env=self.env_for(node),
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    preexec_fn=_tie_to_launcher(),
                )

    def signal(self, name: str, sig: int) -> None:
        node = self.node(name)
        if node.process is not None and node.process.returncode is None:
            node.process.send_signal(sig)

    async def stop(self, name: str | None = None, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL whatever is still running after `grace` seconds."""
        targets = [n for n in (self.nodes if name is None else [self.node(name)]) if n.running]
        for node in targets:
            node.wanted = False
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
        for node in targets:
            assert node.process is not None
            try:
                await asyncio.wait_for(node.process.wait(), grace)
            except TimeoutError:
                node.process.kill()
                await node.process.wait()

    async def kill(self, name: str) -> None:
        node = self.node(name)
        node.wanted = False
        if node.process is not None and node.process.returncode is None:
            node.process.kill()
            await node.process.wait()

    def state(self, name: str) -> dict[str, object] | None:
        """The node's /raft/state, or None if it does not answer."""
        try:
            with urlopen(f"{self.node(name).http_url}/raft/state", timeout=1.0) as resp:
                body: dict[str, object] = json.load(resp)
                return body
        except (URLError, OSError, ValueError):
            return None

    async def states(self) -> dict[str, dict[str, object] | None]:
        names = [n.name for n in self.nodes if n.running]
        results = await asyncio.gather(*(asyncio.to_thread(self.state, n) for n in names))
        return dict(zip(names, results, strict=True))

    async def wait_for_leader(self, timeout: float, exclude: str | None = None) -> str:
        """The name of a leader that every running node agrees on, within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.wanted and not node.running:
                    assert node.process is not None
                    raise RuntimeError(
                        f"{node.name} exited with status {node.process.returncode}; "
                        f"see {node.log_path}:\n{log_tail(node.log_path, 20)}"
                    )
            states = await self.states()
            leaders = {s.get("leader") for s in states.values() if s is not None}
            if (
                len(leaders) == 1
                and None not in states.values()
                and (leader := next(iter(leaders)))
                and leader != exclude
            ):
                return str(leader)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no agreed leader after {timeout:.0f}s: {states}")
            await asyncio.sleep(0.05)


def _tie_to_launcher() -> Callable[[], None]:
    """A `preexec_fn` for a node.

    Its own process group, so that a Ctrl-C in the terminal reaches only the launcher,
    which stops the nodes in order; and, on Linux, SIGTERM if the launcher dies without
    doing so.  Not its own session: Linux schedules each session as one group
    (autogroup), and nodes in separate sessions sharing a few cores starved one another
    for up to 100 ms at a time, which doubled the p99 of the benchmarks.  A preexec_fn
    rather than `process_group=0`: uvloop, which the benchmarks run on, supports only
    the former.
    """
    die_with_launcher = die_with_parent()

    def setup() -> None:
        os.setpgrp()
        die_with_launcher()

    return setup


def _ports(first: int, count: int) -> list[int]:
    return [first + i for i in range(count)]


def _port_problem(args: argparse.Namespace) -> str | None:
    """Each node takes the next port of every range: the ranges must fit and stay apart."""
    ranges = {flag: range(first, first + args.nodes) for flag, first in (
        ("--grpc-port", args.grpc_port), ("--http-port", args.http_port), ("--metrics-port", args.metrics_port)
    )}  # fmt: skip
    for flag, ports in ranges.items():
        if ports.start < 1 or ports.stop - 1 > 65535:
            return f"{flag} {ports.start}: {args.nodes} nodes need ports {ports.start}..{ports.stop - 1}, within 1..65535"
    for (flag, a), (other, b) in itertools.combinations(ranges.items(), 2):
        if a.start < b.stop and b.start < a.stop:
            return (
                f"{flag} {a.start} and {other} {b.start}: {args.nodes} nodes take ports "
                f"{a.start}..{a.stop - 1} and {b.start}..{b.stop - 1}, which overlap; move one range"
            )
    return None


def _data_dir_problem(path: Path) -> str | None:
    if path.exists() and not path.is_dir():
        return f"--data-dir {path}: that is a file; name a directory (it is created if missing)"
    return None


async def _main(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        args.nodes,
        Path(args.data_dir),
        _ports(args.grpc_port, args.nodes),
        _ports(args.http_port, args.nodes),
        _ports(args.metrics_port, args.nodes),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await cluster.start()
    except OSError as exc:
        print(f"dsync cluster could not start: {exc}", file=sys.stderr)
        await cluster.stop()
        return 1
    electing = asyncio.ensure_future(cluster.wait_for_leader(args.timeout))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((electing, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not electing.done():  # Ctrl-C or SIGTERM while the nodes were still starting
        electing.cancel()
        print("stopping the cluster before it came up ...")
        await cluster.stop()
        return 130
    try:
        leader = electing.result()
    except (TimeoutError, RuntimeError) as exc:
        print(f"dsync cluster did not come up: {exc}", file=sys.stderr)
        await cluster.stop()
        return 1
    print(f"dsync cluster of {args.nodes} nodes is up; leader: {leader}\n")
    print(f"{'node':8} {'gRPC':18} {'HTTP':24} {'metrics':28} log")
    for node in cluster:
        print(
            f"{node.name:8} {node.grpc_address:18} {node.http_url:24} "
            f"http://127.0.0.1:{node.metrics_port}/metrics  {node.log_path}"
        )
    print(f"\ntry: curl {cluster.nodes[0].http_url}/raft/state    (Ctrl-C stops the cluster)")
    sys.stdout.flush()
    reported: set[str] = set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        for node in cluster:
            if node.process is not None and not node.running and node.name not in reported:
                reported.add(node.name)
                print(
                    f"{node.name} exited with status {node.process.returncode}; the end of {node.log_path}:\n"
                    f"{log_tail(node.log_path, 12)}"
                )
    print("stopping the cluster ...")
    await cluster.stop()
    print("stopped")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m server.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="first gRPC port (default 50051)")
    parser.add_argument("--http-port", type=int, default=8001, help="first HTTP port (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=9001, help="first metrics port (default 9001)")
    parser.add_argument("--data-dir", default=".data/cluster", help="where nodes keep their data")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a leader")
    args = parser.parse_args()
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if problem := _port_problem(args) or _data_dir_problem(Path(args.data_dir)):
        parser.error(problem)
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
