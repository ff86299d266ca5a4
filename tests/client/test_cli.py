"""Every `dsync` command against a real cluster: its table, its JSON and its exit code.

Commands run in-process through cli.main (what the console script calls), except one
run of `python -m client` as a real subprocess from the repository root.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from dsync_client.cli import main
from tests.client.conftest import RunningCluster
from server.cluster import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, endpoints: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        self.endpoints = ",".join(endpoints)
        self._capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main(["--endpoints", self.endpoints, *argv])
        out, err = self._capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> tuple[int, Any]:
        code, out, _ = self(*argv, "-o", "json")
        return code, json.loads(out)


@pytest.fixture
def cli(shared_cluster: RunningCluster, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(shared_cluster.endpoints, capsys)


def _name(what: str) -> str:
    return f"cli-{what}-{uuid.uuid4().hex[:8]}"


def _table(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_status_shows_every_endpoint_and_exits_6_if_one_does_not_answer(
    cli: Cli, shared_cluster: RunningCluster
) -> None:
    code, out, _ = cli("status")
    rows = _table(out)
    assert code == 0 and rows[0] == ["ENDPOINT", "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED"]
    assert sorted(r[2] for r in rows[1:]) == ["follower", "follower", "leader"]
    code, data = cli.json("status")
    assert code == 0 and [d["endpoint"] for d in data] == shared_cluster.endpoints
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    cli.endpoints += f",{dead}"
    code, out, _ = cli("status", "--timeout", "2")
    assert code == 6 and [dead, "-", "unreachable", "-", "-", "-", "-"] in _table(out)
    assert f"\n{dead}: " in out, "the table is followed by why the endpoint did not answer"


def test_members_lists_the_members_and_the_leader(cli: Cli) -> None:
    code, out, _ = cli("members")
    rows = _table(out)
    assert code == 0 and rows[0] == ["ID", "ADDRESS", "LEADER", "LAST-CONTACT-S"]
    assert [r[0] for r in rows[1:]] == ["node1", "node2", "node3"] and [r[2] for r in rows[1:]].count("yes") == 1
    code, data = cli.json("members")
    assert code == 0 and sum(m["is_leader"] for m in data) == 1
    assert set(data[0]) == {"id", "address", "is_leader", "is_self", "last_contact"}


def test_lock_commands_and_their_exit_codes(cli: Cli) -> None:
    resource = _name("lock")
    code, out, _ = cli("lock", "acquire", resource, "--owner", "alice", "--ttl", "60")
    rows = _table(out)
    assert code == 0 and rows[0] == ["RESOURCE", "OWNER", "MODE", "TOKEN", "TTL-S", "EXPIRES-IN-S"]
    assert rows[1][:3] == [resource, "alice", "exclusive"] and rows[1][4] == "60.0"
    token = int(rows[1][3])

    code, out, err = cli("lock", "acquire", resource, "--owner", "bob")
    assert (code, out) == (4, "") and err.startswith(f"dsync: LockConflict: {resource!r} is held exclusively by alice")
    assert err.endswith("dsync: hint: pass --wait SECONDS to wait for the lock\n")
    code, data = cli.json("lock", "acquire", resource, "--owner", "bob", "--mode", "shared")
    assert code == 4 and data["error"]["type"] == "LockConflict"

    code, out, _ = cli("lock", "get", resource)
    assert code == 0 and out.splitlines()[0] == f"{resource}: exclusive"
    assert _table(out)[2][:4] == ["holder", "alice", "exclusive", str(token)]
    code, data = cli.json("lock", "get", resource, "--consistency", "local")
    assert code == 0 and data["holders"][0]["owner"] == "alice" and data["waiters"] == []

    code, out, _ = cli("lock", "list", "--prefix", resource)
    assert code == 0 and _table(out)[1] == [resource, "exclusive", "alice", "(token", f"{token})", "0"]
    code, data = cli.json("lock", "list", "--prefix", resource)
    assert code == 0 and [lock["resource"] for lock in data] == [resource]

    code, out, _ = cli("lock", "release", resource, "--owner", "alice")
    assert code == 0 and _table(out)[1] == [resource, "alice", str(token)]
    code, _, err = cli("lock", "release", resource, "--owner", "alice")
    assert code == 5 and "NotHeld: alice does not hold" in err
    code, out, _ = cli("lock", "list", "--prefix", resource)
    assert code == 0 and out.strip() == f"no locks held or waited for under {resource!r}"
    code, data = cli.json("lock", "acquire", resource, "--owner", "carol", "--ttl", "1")
    assert code == 0 and data["owner"] == "carol" and data["mode"] == "exclusive"


def test_queue_commands_and_their_exit_codes(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    topic = _name("topic")
    code, out, _ = cli("queue", "publish", topic, '{"n": 1}', "--id", "first")
    assert code == 0 and _table(out) == [["ID", "DUPLICATE"], ["first", "no"]]
    code, data = cli.json("queue", "publish", topic, '{"n": 1}', "--id", "first")
    assert code == 0 and data == [{"id": "first", "duplicate": True}]
    code, data = cli.json("queue", "publish", topic, "2", '"three"')
    assert code == 0 and len(data) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("raw line\n\n"))
    code, _, _ = cli("queue", "publish", topic, "--raw")
    assert code == 0
    code, _, err = cli("queue", "publish", topic, "not json")
    assert code == 2 and "BODY must be JSON" in err

    code, out, _ = cli("queue", "stats", topic)
    assert code == 0 and _table(out)[1][:5] == [topic, "4", "0", "0", "0"]
    code, out, _ = cli("queue", "consume", topic, "--consumer", "c1")
    rows = _table(out)
    assert code == 0 and rows[0] == ["ID", "DELIVERY", "RECEIPT", "BODY"] and rows[1][0] == "first"
    assert rows[1][1] == "1" and rows[1][3] == '{"n":1}'
    code, data = cli.json("queue", "stats", topic)
    assert code == 0 and data["in_flight_by_consumer"] == {"c1": 1} and data["ready"] == 3
    code, out, _ = cli("queue", "stats", topic)
    assert "in flight by consumer: c1: 1" in out

    code, out, _ = cli("queue", "ack", topic, "first", "--receipt", rows[1][2])
    assert code == 0 and _table(out)[1] == [topic, "first", "yes"]
    code, _, err = cli("queue", "ack", topic, "first")
    assert code == 3 and "NotFound" in err

    code, data = cli.json("queue", "consume", topic, "--max", "10", "--ack")
    bodies = [d["body"] for d in data]
    assert code == 0 and bodies == [2, "three", {"raw": "cmF3IGxpbmU="}]  # base64 of b"raw line"
    code, out, _ = cli("queue", "consume", topic, "--wait", "0.2")
    assert code == 3 and out.strip() == "(no message ready)"
    code, data = cli.json("queue", "consume", topic)
    assert (code, data) == (3, [])


def test_cache_commands_and_their_exit_codes(cli: Cli) -> None:
    key = _name("key")
    code, out, err = cli("cache", "get", key)
    assert (code, out.strip()) == (3, f"{key}: not found")
    code, data = cli.json("cache", "get", key)
    assert (code, data) == (3, {"key": key, "found": False})
    code, _, err = cli("cache", "put", key, "hello")
    assert code == 2 and "VALUE must be JSON" in err and "--string" in err
    code, out, _ = cli("cache", "put", key, '{"a": [1, 2]}', "--ttl", "60")
    rows = _table(out)
    assert code == 0 and rows[0] == ["KEY", "VERSION"] and rows[1][0] == key
    version = int(rows[1][1])
    code, out, _ = cli("cache", "get", key)
    assert code == 0 and _table(out)[1] == [key, str(version), '{"a":[1,2]}']
    code, data = cli.json("cache", "put", key, "hello", "--string")
    assert code == 0 and data["version"] > version
    code, data = cli.json("cache", "get", key, "--consistency", "local")
    assert code == 0 and data["value"] == "hello" and data["found"] is True
    code, out, _ = cli("cache", "get", key)
    assert code == 0 and _table(out)[1][2] == '"hello"', "a string shows as JSON, unlike the number 7"
    code, out, _ = cli("cache", "invalidate", key)
    assert code == 0 and _table(out)[1][:2] == [key, "yes"]
    code, data = cli.json("cache", "invalidate", key)
    assert code == 0 and data["existed"] is False and data["version"] == 0


def test_usage_mistakes_exit_2_and_an_unreachable_cluster_exits_6(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["cache", "get"])
    assert raised.value.code == 2 and "the following arguments are required: key" in capsys.readouterr().err
    assert main(["--endpoints", "nohost", "status"]) == 2
    assert "'nohost' is not host:port" in capsys.readouterr().err
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    assert main(["cache", "get", "k", "--endpoints", nobody, "--timeout", "0.5"]) == 6
    err = capsys.readouterr().err
    assert "Unavailable: gave up after" in err and "write" not in err, "a read has no unknown outcome"


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_a_usage_error(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    assert main(["cache", "get", "k", "--endpoints", nobody, "--timeout", timeout]) == 2
    err = capsys.readouterr().err
    assert err == f"dsync: --timeout must be a finite number of seconds above 0, not {timeout}\n"


def test_a_wait_that_is_not_a_finite_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(SystemExit) as raised:
        main(["lock", "acquire", "r", "--wait", "nan", "--endpoints", nobody, "--timeout", "0.5"])
    assert raised.value.code == 2 and "argument --wait: must be a finite number of seconds" in capsys.readouterr().err


def test_python_dash_m_client_runs_the_cli_from_a_checkout(shared_cluster: RunningCluster) -> None:
    env = {**os.environ, "DSYNC_ENDPOINTS": ",".join(shared_cluster.endpoints)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-m", "client", "-o", "json", "members"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert [m["id"] for m in json.loads(result.stdout)] == ["node1", "node2", "node3"]
