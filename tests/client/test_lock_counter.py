"""The lock's promise under failure: processes increment a counter file, each inside
client.lock(...) (read, pause, write back), while the leader is killed mid-run.  No
increment is lost (final count == successful increments) and the fencing tokens the
counter sees only ever grow, so no two holders ever overlapped."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.conftest import RunningCluster, start_cluster, stop_cluster
from tests.client.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("counter_worker.py")
WORKERS = 4
INCREMENTS = 15


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RunningCluster]:
    """A cluster of this test's own: it loses its leader."""
    running = start_cluster(tmp_path / "nodes")
    yield running
    stop_cluster(running)


def _history(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(token), int(count)) for token, count in (line.split() for line in path.read_text().splitlines())]


def test_counter_under_lock_survives_a_leader_kill(own_cluster: RunningCluster, tmp_path: Path) -> None:
    work = tmp_path / "counter"
    work.mkdir()
    (work / "counter.json").write_text(json.dumps({"count": 0, "token": 0}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT)])}
    workers = []
    for _ in range(WORKERS):
        endpoints = random.sample(own_cluster.endpoints, k=3)  # some workers start on followers
        command = [sys.executable, str(WORKER), "--dir", str(work), "--increments", str(INCREMENTS)]
        command += ["--endpoints", ",".join(endpoints)]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        wait_until(lambda: len(_history(work / "history.log")) >= 10, 30, "10 increments before the kill")
        leader = own_cluster.leader()
        own_cluster.run(own_cluster.cluster.kill(leader))
        at_kill = len(_history(work / "history.log"))
        new_leader = own_cluster.leader(exclude=leader)
        outputs = [w.communicate(timeout=90) for w in workers]
    finally:
        for w in workers:
            w.kill()
    reports = []
    for (out, err), w in zip(outputs, workers):
        assert w.returncode == 0, err
        reports.append(json.loads(out))
    history = _history(work / "history.log")
    tokens = [token for token, _ in history]
    successes = sum(r["successes"] for r in reports)
    print(f"killed {leader} after {at_kill} increments; {new_leader} took over; {len(history)} increments")
    assert [r["errors"] for r in reports] == [[]] * WORKERS
    assert successes == WORKERS * INCREMENTS, reports
    assert json.loads((work / "counter.json").read_text())["count"] == successes == len(history)
    assert [count for _, count in history] == list(range(1, successes + 1))
    assert tokens == sorted(set(tokens)), f"fencing tokens went backwards or repeated: {tokens}"
    assert len(history) > at_kill, "no increment after the leader was killed"
