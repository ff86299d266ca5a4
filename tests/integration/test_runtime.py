"""The node runtime on real clusters: separate processes, private Redis, loopback gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
from redis.asyncio import Redis

from server.cluster import LocalCluster, free_ports
from server.storage.embedded_redis import EmbeddedRedis, RedisStartError, unix_socket_fits
from server.storage.keys import NodeKeys
from tests.integration.conftest import ELECTION_TIMEOUT_S, Kv, make_cluster, poll
from tests.processes import alive, children

pytestmark = pytest.mark.integration


async def _applied_everywhere(cluster: LocalCluster, index: int, timeout: float = 10) -> None:
    def applied(states: dict[str, dict[str, object] | None]) -> bool:
        return all(s is not None and int(s["applied_index"]) >= index for s in states.values())  # type: ignore[call-overload]

    await poll(cluster.states, applied, f"index {index} applied everywhere", timeout)


async def test_writes_through_any_node_are_applied_on_every_node(cluster: LocalCluster, kv: Kv) -> None:
    names = [n.name for n in cluster]
    versions = [await kv.put(names[i % 3], f"key{i}", f"value{i}".encode()) for i in range(30)]
    assert versions == sorted(versions) and len(set(versions)) == 30
    await _applied_everywhere(cluster, versions[-1])
    for name in names:
        for i in range(30):
            assert await kv.get(name, f"key{i}", linearizable=False) == f"value{i}".encode()


async def test_leader_killed_a_new_one_is_elected_fast_and_no_acknowledged_write_is_lost(
    cluster: LocalCluster, kv: Kv
) -> None:
    leader = await cluster.wait_for_leader(timeout=10)
    acked = {}
    for i in range(20):
        node = cluster.nodes[i % 3].name
        acked[f"before{i}"] = await kv.put(node, f"before{i}", b"x")
    await cluster.kill(leader)  # SIGKILL: no goodbye
    killed_at = time.monotonic()
    new_leader = await cluster.wait_for_leader(timeout=10, exclude=leader)
    elapsed = time.monotonic() - killed_at
    print(f"new leader {new_leader} {elapsed:.2f}s after kill -9 of {leader}")
    assert new_leader != leader
    assert elapsed < 2 * ELECTION_TIMEOUT_S, f"election took {elapsed:.2f}s"
    survivors = [n.name for n in cluster if n.name != leader]
    for key in acked:
        for name in survivors:
            assert await kv.get(name, key) == b"x", f"{key} lost on {name}"
    # The cluster keeps serving writes through either survivor.
    for name in survivors:
        await kv.put(name, f"after-{name}", b"y")


async def _write_while_down(cluster: LocalCluster, kv: Kv, leader: str, follower: str, writes: int) -> int:
    """Write "early", kill `follower`, write `writes` keys through `leader`, restart the
    follower on its data dir; the version of the last write."""
    await kv.put(leader, "early", b"1")
    await cluster.kill(follower)
    last = 0
    for i in range(writes):
        last = await kv.put(leader, f"while-down{i}", b"2")
    await cluster.start(follower)
    return last


async def test_a_killed_node_restarted_on_its_data_dir_catches_up(cluster: LocalCluster, kv: Kv) -> None:
    leader = await cluster.wait_for_leader(timeout=10)
    follower = next(n.name for n in cluster if n.name != leader)
    last = await _write_while_down(cluster, kv, leader, follower, 25)
    await _applied_everywhere(cluster, last, timeout=20)
    assert await kv.get(follower, "early", linearizable=False) == b"1"
    assert await kv.get(follower, "while-down24", linearizable=False) == b"2"


async def test_nodes_compact_their_logs_and_a_node_far_behind_restarts_from_a_snapshot(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, SNAPSHOT_ENTRIES="100", SNAPSHOT_CATCHUP_ENTRIES="20")
    await cluster.start()
    kv = Kv(cluster)
    try:
        leader = await cluster.wait_for_leader(timeout=30)
        follower = next(n.name for n in cluster if n.name != leader)
        last = await _write_while_down(cluster, kv, leader, follower, 250)
        await _applied_everywhere(cluster, last, timeout=30)
        states = await cluster.states()
        for name, state in states.items():
            assert state is not None
            first = state["replica"]["first_index"]  # type: ignore[index]
            assert first > 100, f"{name} did not compact its log: it starts at {first}"
        assert await kv.get(follower, "early", linearizable=False) == b"1"
        assert await kv.get(follower, "while-down249", linearizable=False) == b"2"
        # Restarted once more, the follower restores its own snapshot and replays the rest.
        await cluster.kill(follower)
        await cluster.start(follower)
        last = await kv.put(leader, "after", b"3")
        await _applied_everywhere(cluster, last, timeout=30)
        assert await kv.get(follower, "while-down0", linearizable=False) == b"2"
    finally:
        await kv.close()
        await cluster.stop()


async def test_a_restarted_node_keeps_its_term_and_vote(cluster: LocalCluster) -> None:
    leader = await cluster.wait_for_leader(timeout=10)
    follower = next(n.name for n in cluster if n.name != leader)
    before = cluster.state(follower)
    assert before is not None
    replica = before["replica"]
    assert isinstance(replica, dict) and replica["vote"], "a follower of an elected leader has voted"
    await cluster.kill(follower)
    await cluster.start(follower)
    deadline = time.monotonic() + 20
    while (after := cluster.state(follower)) is None:
        assert time.monotonic() < deadline, "restarted node never answered"
        await asyncio.sleep(0.05)
    again = after["replica"]
    assert isinstance(again, dict)
    # Read back from its own storage: same term and vote unless a newer term began meanwhile.
    assert int(again["term"]) >= int(replica["term"])
    if again["term"] == replica["term"]:
        assert again["vote"] == replica["vote"], "the node forgot whom it voted for in this term"


async def _forget_last_entries(cluster: LocalCluster, name: str, count: int) -> None:
    """What a machine crash may do to a stopped node on appendfsync everysec or no: its
    last `count` log entries are gone, and its commit index with them."""
    node = cluster.node(name)
    keys = NodeKeys.for_node(cluster.env_for(node).get("CLUSTER_NAME", "dsync"), name)
    server = EmbeddedRedis(node.data_dir / "redis")
    deadline = time.monotonic() + 10
    while True:
        try:
            await server.start()
            break
        except RedisStartError:  # the killed node's redis-server is still on its way out
            assert time.monotonic() < deadline, f"{name}'s redis-server never let go of its data dir"
            await asyncio.sleep(0.05)
    client = Redis.from_url(server.url)
    try:
        length = await client.llen(keys.log)
        assert 0 < count < length, f"{name} holds {length} entries; cannot forget {count} of them"
        assert not await client.exists(keys.snapshot), f"{name} took a snapshot; forgetting entries would need more"
        start = int(await client.hget(keys.log_start, "index") or 0)
        kept = start + length - count
        await client.ltrim(keys.log, 0, length - count - 1)
        commit = int(await client.hget(keys.hard_state, "commit") or 0)
        await client.hset(keys.hard_state, "commit", min(commit, kept))
    finally:
        await client.aclose()
        await server.stop()


async def test_a_follower_back_without_writes_it_acknowledged_is_caught_up_by_the_same_leader(tmp_path: Path) -> None:
    """The leader counted those writes on the follower; it must notice the restart and
    send them again, or the follower stays behind for as long as that leader leads.
    Elections are made slow (2-4 s): one would repair the follower too, and hide a failure."""
    cluster = make_cluster(tmp_path, ELECTION_TICKS="40")
    await cluster.start()
    kv = Kv(cluster)
    try:
        leader = await cluster.wait_for_leader(timeout=30)
        follower = next(n.name for n in cluster if n.name != leader)
        last = 0
        for i in range(10):
            last = await kv.put(leader, f"k{i}", b"v")
        await _applied_everywhere(cluster, last)
        before = cluster.state(leader)
        assert before is not None
        await cluster.kill(follower)
        await _forget_last_entries(cluster, follower, 5)
        await cluster.start(follower)
        for i in range(10, 13):
            last = await kv.put(leader, f"k{i}", b"v")
        await _applied_everywhere(cluster, last, timeout=10)
        assert await kv.get(follower, "k9", linearizable=False) == b"v"
        after = cluster.state(leader)
        assert after is not None and after["role"] == "leader"
        assert after["term"] == before["term"], "caught up by the same leader"
    finally:
        await kv.close()
        await cluster.stop()


def _run_node(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server"],
        env={**os.environ, "DOTENV": "/nonexistent", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PEERS": "n2=http://127.0.0.1:1,n2=http://127.0.0.1:2"}, "names 'n2' twice"),
        ({"QUORUM": "3"}, "set QUORUM=2"),
        ({"PEERS": "n1=http://127.0.0.1:9"}, "SELF_URL is missing from the membership"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "unreachable"),
        ({"REDIS_URL": "127.0.0.1:6379"}, "is not a Redis URL"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='VERBOSE'"),
    ],
)
def test_a_misconfigured_node_exits_with_a_message_saying_what_to_fix(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    base = {
        "NODE_ID": "n1",
        "SELF_URL": f"http://127.0.0.1:{grpc_port}",
        "PEERS": "n2=http://127.0.0.1:1,n3=http://127.0.0.1:2",
        "HTTP_PORT": str(http_port),
        "METRICS_PORT": str(metrics_port),
        "DATA_DIR": str(tmp_path),
    }
    result = _run_node(base | env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_node_whose_port_is_taken_exits_naming_the_variable(tmp_path: Path) -> None:
    import socket

    grpc_port, metrics_port = free_ports(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = _run_node(
            {
                "NODE_ID": "n1",
                "SELF_URL": f"http://127.0.0.1:{grpc_port}",
                "HTTP_PORT": str(taken),
                "METRICS_PORT": str(metrics_port),
                "DATA_DIR": str(tmp_path),
            }
        )
    assert result.returncode == 2
    assert f"HTTP_PORT={taken}: the port is already in use" in result.stderr


async def test_sigterm_stops_a_node_and_its_private_redis(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=1)
    await cluster.start()
    try:
        await cluster.wait_for_leader(timeout=30)
        redis_dir = cluster.nodes[0].data_dir / "redis"
        pid_file = redis_dir / "redis-server.pid"
        redis_pid = int(pid_file.read_text()) if pid_file.exists() else None
        if redis_pid is not None:  # the node's own server, on a unix socket when its path fits
            assert (redis_dir / "redis.sock").exists() == unix_socket_fits(redis_dir)
        cluster.signal("node1", signal.SIGTERM)
        proc = cluster.nodes[0].process
        assert proc is not None
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        if redis_pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(redis_pid, 0)
    finally:
        await cluster.stop()


async def launch_one_node(tmp_path: Path, timeout: int = 30, **env: str) -> asyncio.subprocess.Process:
    """`python -m server.cluster` with one node on free ports, its output piped."""
    grpc_port, http_port, metrics_port = free_ports(3)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cluster", "--nodes", "1", "--data-dir", str(tmp_path), "--timeout", str(timeout),
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "DOTENV": os.devnull, **env},
    )  # fmt: skip


async def read_until(launcher: asyncio.subprocess.Process, said: bytes, output: bytes, timeout: float) -> bytes:
    """The launcher's output up to the line that holds `said`, after `output` read before."""
    assert launcher.stdout is not None
    while said not in output:
        line = await asyncio.wait_for(launcher.stdout.readline(), timeout)
        assert line, f"the launcher ended before saying {said!r}: {output.decode(errors='replace')}"
        output += line
    return output


async def test_a_node_whose_private_redis_server_dies_stops_and_its_launcher_says_why(tmp_path: Path) -> None:
    launcher = await launch_one_node(tmp_path)
    try:
        output = await read_until(launcher, b"is up", b"", 45)
        redis_pid = int((tmp_path / "node1" / "redis" / "redis-server.pid").read_text())
        os.kill(redis_pid, signal.SIGKILL)
        said = (await read_until(launcher, b"Restart the node", output, 20)).decode()
        assert "node1 exited with status 1; the end of " in said
        assert f"dsync: node node1 stopped: its private redis-server stopped under it: redis-server (pid {redis_pid}) was killed by SIGKILL" in said
        assert f"Restart the node: what it acknowledged is in {tmp_path / 'node1' / 'redis'}" in said
    finally:
        launcher.terminate()
        await asyncio.wait_for(launcher.wait(), 20)


async def _fill_up(redis: EmbeddedRedis) -> None:
    async with Redis.from_url(redis.url) as client:
        await client.config_set("maxmemory", 1)  # every write now fails with OOM


@pytest.mark.parametrize(
    ("trouble", "said", "why"),
    [
        (EmbeddedRedis.stop, "lost its Redis at {url} (", "restart the node once it answers again"),
        (_fill_up, "its Redis at {url} refused a write: ", "used memory > 'maxmemory'"),
    ],
    ids=["gone", "full"],
)
async def test_a_node_whose_given_redis_fails_stops_saying_how(
    tmp_path: Path, trouble: Callable[[EmbeddedRedis], Awaitable[None]], said: str, why: str
) -> None:
    async with EmbeddedRedis(tmp_path / "redis") as redis:
        url = redis.url
        cluster = make_cluster(tmp_path, nodes=1, REDIS_URL=url)
        await cluster.start()
        try:
            await cluster.wait_for_leader(timeout=30)
            await trouble(redis)
            node = cluster.nodes[0]
            assert node.process is not None
            # The leader's clock entries keep saving, so the trouble shows without any client.
            assert await asyncio.wait_for(node.process.wait(), 15) == 1
            (last,) = [line for line in node.log_path.read_text().splitlines() if line.startswith("dsync: node")]
            assert last.startswith(f"dsync: node node1 stopped: {said.format(url=url)}") and why in last, last
        finally:
            await cluster.stop()


async def test_a_node_without_the_clusters_token_neither_joins_nor_disturbs_it(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, CLUSTER_TOKEN="members-only-" + "7" * 20)
    try:
        await cluster.start("node1")
        await cluster.start("node2")
        leader = await cluster.wait_for_leader(timeout=30)
        term = (await cluster.states())[leader]["term"]  # type: ignore[index]
        cluster.extra_env["CLUSTER_TOKEN"] = "an-impostor-" + "7" * 20
        await cluster.start("node3")

        async def refusing() -> list[str]:
            logs = {m: cluster.node(m).log_path.read_text() for m in ("node1", "node2")}
            return [m for m, log in logs.items() if "without this cluster's token: refused" in log]

        # Both members refuse its streams; it hears from neither.
        await poll(refusing, lambda members: len(members) == 2, "both members refusing node3", 30)
        states = await cluster.states()
        impostor = states["node3"]
        assert impostor is not None and impostor["leader"] == "" and impostor["role"] != "follower", impostor
        assert all(m["last_heard_s"] is None for m in impostor["members"] if not m["self"]), impostor  # type: ignore[attr-defined, index]
        for member in ("node1", "node2"):
            state = states[member]
            assert state is not None and state["leader"] == leader
            assert state["term"] == term, "the impostor's campaign moved the members' term"
            with urlopen(f"http://127.0.0.1:{cluster.node(member).metrics_port}/metrics", timeout=5) as page:
                metrics = page.read().decode()
            (refused,) = re.findall(r'^dsync_peer_streams_refused_total\{reason="no_token"\} (\S+)$', metrics, re.M)
            assert float(refused) >= 1
    finally:
        await cluster.stop()


async def test_nodes_share_the_launchers_session_but_not_its_process_group(tmp_path: Path) -> None:
    """Own process group: a terminal's Ctrl-C reaches the launcher alone, which stops the
    nodes in order.  Same session: Linux schedules a session as one group, and nodes in
    sessions of their own starve one another on a small machine."""
    cluster = make_cluster(tmp_path, nodes=1)
    await cluster.start()
    try:
        await cluster.wait_for_leader(timeout=30)
        proc = cluster.nodes[0].process
        assert proc is not None
        pids = [proc.pid]
        pid_file = cluster.nodes[0].data_dir / "redis" / "redis-server.pid"
        if pid_file.exists():  # the node's private redis-server, unless REDIS_URL names one
            pids.append(int(pid_file.read_text()))
        for pid in pids:
            assert os.getsid(pid) == os.getsid(0)
            assert os.getpgid(pid) == proc.pid != os.getpgid(0)
    finally:
        await cluster.stop()


async def test_nodes_stop_when_their_launcher_is_killed(tmp_path: Path) -> None:
    launcher = await launch_one_node(tmp_path)
    started: list[int] = []
    try:
        await read_until(launcher, b"is up", b"", 45)
        started = children(launcher.pid)
        assert len(started) == 1, started
        started.append(int((tmp_path / "node1" / "redis" / "redis-server.pid").read_text()))
    finally:
        launcher.kill()
        await launcher.wait()

    async def running() -> list[int]:
        return [pid for pid in started if alive(pid)]

    try:
        await poll(running, lambda left: not left, "the node and its redis-server gone after the launcher's SIGKILL", 20)
    finally:
        for pid in await running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_launcher_told_to_stop_before_its_cluster_is_up_stops_it_at_once(tmp_path: Path) -> None:
    """SIGTERM while the nodes are still electing (here they never would: elections are
    slowed past the test) must not wait out the launcher's leader timeout."""
    launcher = await launch_one_node(tmp_path, timeout=120, ELECTION_TICKS="1000")

    async def spawned() -> list[int]:
        return children(launcher.pid)

    try:
        node_pids = await poll(spawned, bool, "the launcher's node started", 20)
        launcher.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(launcher.wait(), 20) == 130
        assert launcher.stdout is not None
        assert b"stopping the cluster before it came up" in await launcher.stdout.read()
        assert not [pid for pid in node_pids if alive(pid)], "a node outlived its launcher's stop"
    finally:
        if launcher.returncode is None:
            launcher.kill()
            await launcher.wait()


async def test_a_write_to_a_cluster_without_quorum_fails_as_unavailable(cluster: LocalCluster, kv: Kv) -> None:
    leader = await cluster.wait_for_leader(timeout=10)
    followers = [n.name for n in cluster if n.name != leader]
    for name in followers:
        await cluster.kill(name)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await kv.put(leader, "lonely", b"z")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
