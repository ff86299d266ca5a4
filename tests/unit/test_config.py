"""Configuration checks: each mistake is refused with a message naming what to fix."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load, redacted

BASE = {
    "NODE_ID": "node1",
    "SELF_URL": "http://127.0.0.1:50051",
    "PEERS": "node2=http://127.0.0.1:50052,node3=http://127.0.0.1:50053",
}


def test_guide_style_configuration_gives_three_voters() -> None:
    cfg = load(BASE | {"QUORUM": "2", "HTTP_PORT": "8001", "METRICS_PORT": "9001"})
    assert cfg.voters == ("node1", "node2", "node3")
    assert cfg.grpc_port == 50051
    assert cfg.peers == {"node2": "127.0.0.1:50052", "node3": "127.0.0.1:50053"}
    assert cfg.redis_url is None and str(cfg.data_dir) == ".data/node1"
    assert cfg.appendfsync == "always"
    assert (cfg.snapshot_entries, cfg.snapshot_catchup_entries) == (100_000, 5_000)
    assert load(BASE | {"SNAPSHOT_CATCHUP_ENTRIES": "0"}).snapshot_catchup_entries == 0


def test_self_may_be_listed_in_peers_when_it_agrees() -> None:
    cfg = load(BASE | {"PEERS": "node1=127.0.0.1:50051," + BASE["PEERS"]})
    assert cfg.voters == ("node1", "node2", "node3")


def test_a_peer_entry_may_give_the_members_http_address() -> None:
    peers = "node2=http://127.0.0.1:50052;http=http://127.0.0.1:8002/,node3=http://127.0.0.1:50053"
    cfg = load(BASE | {"PEERS": peers, "HTTP_PORT": "8001"})
    assert {m.name: m.http for m in cfg.members} == {
        "node1": "http://127.0.0.1:8001",  # its own: SELF_URL's host and HTTP_PORT
        "node2": "http://127.0.0.1:8002",
        "node3": None,  # not configured: unknown, never guessed
    }
    assert cfg.peers == {"node2": "127.0.0.1:50052", "node3": "127.0.0.1:50053"}
    listed = load(BASE | {"PEERS": "node1=http://127.0.0.1:50051;http=http://localhost:8001," + peers})
    assert listed.me.http == "http://localhost:8001"  # as advertised in PEERS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"NODE_ID": ""}, "NODE_ID"),
        ({"NODE_ID": "bad name"}, "NODE_ID"),
        ({"PEERS": "node2=http://127.0.0.1:50052,node2=http://127.0.0.1:50054"}, "twice"),
        ({"PEERS": "node2=http://127.0.0.1:50051"}, "own address"),
        ({"PEERS": "http://127.0.0.1:50052"}, "has no name"),
        ({"PEERS": "node2=http://127.0.0.1"}, "no port"),
        ({"PEERS": "node2=ftp://x:1"}, "not a peer URL"),
        ({"PEERS": "node1=http://127.0.0.1:59999"}, "SELF_URL is missing from the membership"),
        ({"PEERS": "node2=http://127.0.0.1:50052;http=8002"}, "not an HTTP base URL"),
        ({"PEERS": "node2=http://127.0.0.1:50052;https://x:1"}, "must be http="),
        ({"QUORUM": "3"}, "set QUORUM=2"),
        ({"QUORUM": "two"}, "QUORUM"),
        ({"HTTP_PORT": "70000"}, "HTTP_PORT"),
        ({"HTTP_PORT": "50051"}, "must differ"),
        ({"SELF_URL": "", "GRPC_PORT": ""}, "GRPC_PORT is not set"),
        ({"REDIS_APPENDFSYNC": "sometimes"}, "REDIS_APPENDFSYNC"),
        ({"TICK_MS": "0"}, "TICK_MS"),
        ({"SNAPSHOT_CATCHUP_ENTRIES": "-1"}, "SNAPSHOT_CATCHUP_ENTRIES"),
        ({"HTTP_PORT": "8\u00b2"}, "HTTP_PORT"),  # '8²': isdigit, but no number
        ({"TICK_MS": "5\u00b2"}, "TICK_MS"),
        ({"QUORUM": "\u00b2"}, "QUORUM"),
        ({"SELF_URL": "http://[::1"}, "not a peer URL"),
        ({"PEERS": "node2=http://[::1:25052"}, "not a peer URL"),
        ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://127.0.0.1:99999"}, "REDIS_URL"),
        ({"CLUSTER_TOKEN": "short"}, "CLUSTER_TOKEN must be 16-256 characters, got 5"),
        ({"CLUSTER_TOKEN": "x" * 257}, "CLUSTER_TOKEN must be 16-256 characters, got 257"),
        ({"CLUSTER_TOKEN": "0123456789abcdef\u00e9"}, "printable ASCII only, not 'é'"),  # metadata is ASCII
        ({"CLUSTER_TOKEN": "0123456789\tabcdef"}, "printable ASCII only, not '\\\\t'"),
        ({"CLUSTER_TOKEN": " \t "}, "only blanks, which would turn peer authentication off"),
    ],
)
def test_mistakes_are_refused_with_a_message_naming_the_fix(
    change: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(BASE | change)


def test_redis_urls_redis_py_opens_are_taken_as_given() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://user:secret@cache.example:6380", "unix:///run/redis.sock"):
        assert load(BASE | {"REDIS_URL": url}).redis_url == url
    assert load(BASE | {"REDIS_URL": " "}).redis_url is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@db:6379/0", "redis://:***@db:6379/0"),
        ("redis://app:s3cr%40t@db:6379", "redis://app:***@db:6379"),
        ("rediss://db:6380/1", "rediss://db:6380/1"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
        ("redis://db:6379/0?password=secret", "redis://db:6379/0?password=***"),
        ("unix:///run/r.sock?db=0&password=secret&x=1", "unix:///run/r.sock?db=0&password=***&x=1"),
    ],
)
def test_a_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_a_cluster_token_is_optional_and_kept_as_given_but_never_shown() -> None:
    assert load(BASE).cluster_token == load(BASE | {"CLUSTER_TOKEN": ""}).cluster_token == ""
    cfg = load(BASE | {"CLUSTER_TOKEN": " 0123456789abcdef "})
    assert cfg.cluster_token == "0123456789abcdef" and "0123456789abcdef" not in repr(cfg)
