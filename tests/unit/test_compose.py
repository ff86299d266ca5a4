"""The docker-compose topology is a valid cluster: every node's environment passes the
same checks `python -m server` makes, and all nodes agree on the membership."""

from __future__ import annotations

import re
from pathlib import Path

from server import config

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def _environments() -> list[dict[str, str]]:
    text = COMPOSE.read_text()
    blocks = re.findall(r"environment:\n((?:      .*\n)+)", text)
    envs = [dict(re.findall(r'^      (\w+): "?([^"\n]*)"?$', block, re.M)) for block in blocks]
    # As compose fills them in with the variable unset: ${NAME:-default} -> default.
    return [{k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()} for env in envs]


def test_every_compose_node_is_configured_validly_and_alike() -> None:
    environments = _environments()
    assert len(environments) == 3
    configs = [config.load(env) for env in environments]
    assert sorted(c.node_id for c in configs) == ["node1", "node2", "node3"]
    memberships = {tuple((m.name, m.address, m.http) for m in c.members) for c in configs}
    assert len(memberships) == 1, f"nodes disagree on the membership: {memberships}"
    assert all(env["REDIS_URL"] == "redis://redis:6379/0" for env in environments)
    assert all(c.cluster_token == "" for c in configs), "unset, DSYNC_CLUSTER_TOKEN gives every node none"
    assert COMPOSE.read_text().count("CLUSTER_TOKEN: ${DSYNC_CLUSTER_TOKEN:-}") == 3
