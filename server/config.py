"""A node's configuration, read from the environment (and a `.env` file), checked up front.

Variables follow the deployment guide: NODE_ID, SELF_URL, PEERS, QUORUM, HTTP_PORT,
METRICS_PORT, REDIS_URL, plus GRPC_PORT and DATA_DIR.  Membership works like etcd's
`--initial-cluster`: every member has a name and the URL its peers reach it at (its gRPC
address).  SELF_URL is this node's own such URL; PEERS lists the others (listing this
node too is allowed, if it agrees with SELF_URL).

    NODE_ID=node1 SELF_URL=http://127.0.0.1:50051 \
    PEERS=node2=http://127.0.0.1:50052,node3=http://127.0.0.1:50053 python -m server

A peer entry may also say where that member serves HTTP, `;http=URL` after its peer URL
(`node2=http://10.0.0.2:50052;http=http://10.0.0.2:8002`), so that /raft/state can send
curl users to the leader's HTTP address.  Nothing else depends on it: a node cannot
check it, and without it the leader's HTTP address is reported as unknown.  This node's
own is `http://<SELF_URL's host>:HTTP_PORT` unless PEERS lists it with one.

Every mistake is reported with what to change, and the node exits with status 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from server.raft.quorum import majority

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
APPENDFSYNC_MODES = ("always", "everysec", "no")
CACHE_POLICIES = ("lru", "lfu")
# A CLUSTER_TOKEN shorter than this is too easy to guess to be worth its name.
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256


class ConfigError(ValueError):
    """The configuration cannot work; the message says which variable to fix and how."""


@dataclass(frozen=True)
class Member:
    name: str
    host: str
    port: int
    http: str | None = None  # the base URL of its HTTP gateway, when configured

    @property
    def address(self) -> str:
        """host:port for a gRPC channel."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    members: tuple[Member, ...]  # sorted by name; includes this node
    bind_host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    redis_url: str | None  # None: start a private redis-server under data_dir
    data_dir: Path
    cluster: str
    cluster_token: str = field(repr=False)  # "" for none: then peers are not authenticated
    appendfsync: str
    tick_ms: int
    election_ticks: int
    snapshot_entries: int
    snapshot_catchup_entries: int
    # Part of the replicated state machine's contract: every node must use the same values.
    cache_max_entries: int
    cache_max_bytes: int
    cache_policy: str

    @property
    def me(self) -> Member:
        return next(m for m in self.members if m.name == self.node_id)

    @property
    def peers(self) -> dict[str, str]:
        """Peer name -> gRPC address, without this node."""
        return {m.name: m.address for m in self.members if m.name != self.node_id}

    @property
    def voters(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)


def parse_member_url(url: str, what: str) -> tuple[str, int]:
    """`http://host:port`, `grpc://host:port` or `host:port` -> (host, port)."""
    raw = url.strip()
    try:
        parts = urlsplit(raw if "://" in raw else f"grpc://{raw}")
    except ValueError as exc:  # an unclosed [IPv6 bracket, say
        raise ConfigError(f"{what}: {url!r} is not a peer URL ({exc}); write it as http://HOST:GRPC_PORT") from None
    if parts.scheme not in ("http", "grpc") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{what}: {url!r} is not a peer URL; write it as http://HOST:GRPC_PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port <= 0:
        raise ConfigError(f"{what}: {url!r} has no port; write it as http://HOST:GRPC_PORT")
    return parts.hostname, port


def parse_http_url(url: str, what: str) -> str:
    """`http://host:port` (or https) -> the same, without a trailing slash."""
    raw = url.strip().rstrip("/")
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or port is None:
        raise ConfigError(f"{what}: {url!r} is not an HTTP base URL; write it as http://HOST:HTTP_PORT")
    return raw


def _name(value: str, what: str) -> str:
    name = value.strip()
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise ConfigError(
            f"{what}: {value!r} is not a valid node name "
            "(1-64 characters of letters, digits, '-', '_', '.')"
        )
    return name


def _redis_url(raw: str) -> str | None:
    """None: start a private redis-server.  Otherwise a URL redis-py can open."""
    if not raw:
        return None
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("redis", "rediss", "unix") or port == -1 or (parts.scheme != "unix" and not parts.hostname):
        raise ConfigError(
            f"REDIS_URL={raw!r} is not a Redis URL: write redis://HOST:PORT[/DB] (or unix:///PATH), "
            "or leave it unset for a private redis-server"
        )
    return raw


def _token(given: str | None) -> str:
    """The cluster's shared secret ("" for none): it travels as gRPC metadata, so printable ASCII."""
    raw = (given or "").strip()
    fix = "make one with `openssl rand -hex 16`, or leave CLUSTER_TOKEN unset (empty)"
    if given and not raw:
        raise ConfigError(f"CLUSTER_TOKEN is only blanks, which would turn peer authentication off: {fix}")
    if raw and not MIN_TOKEN_CHARS <= len(raw) <= MAX_TOKEN_CHARS:
        raise ConfigError(
            f"CLUSTER_TOKEN must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} characters, got {len(raw)}: {fix}"
        )
    if bad := next((c for c in raw if not (c.isascii() and c.isprintable())), None):
        raise ConfigError(f"CLUSTER_TOKEN may hold printable ASCII only, not {bad!r}: {fix}")
    return raw


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")


def redacted(url: str) -> str:
    """`url` with any password replaced, for logs and messages: the one in its user info
    and a `password=` query parameter (redis-py reads both)."""
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        url = parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()
    return _QUERY_PASSWORD.sub(r"\1***", url)


def _whole(raw: str) -> bool:
    """Digits 0-9 only: str.isdigit also takes '²', which int() refuses."""
    return raw.isascii() and raw.isdecimal()


def _port(env: Mapping[str, str], key: str, default: int | None) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        if default is None:
            raise ConfigError(f"{key} is not set")
        return default
    if not _whole(raw) or not 0 < int(raw) < 65536:
        raise ConfigError(f"{key}={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def _int(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    if not _whole(raw) or not low <= int(raw) <= high:
        raise ConfigError(f"{key}={raw!r} must be a whole number from {low} to {high}")
    return int(raw)


def parse_peers(raw: str) -> list[Member]:
    members: list[Member] = []
    for n, item in enumerate(p for p in raw.split(",") if p.strip()):
        name, sep, rest = item.partition("=")
        if not sep:
            raise ConfigError(
                f"PEERS entry {n + 1} ({item.strip()!r}) has no name; "
                "write each peer as NAME=http://HOST:GRPC_PORT"
            )
        url, _, option = rest.partition(";")
        what = f"PEERS entry {name.strip()!r}"
        host, port = parse_member_url(url, what)
        http = None
        if option:
            key, sep, value = option.partition("=")
            if key.strip() != "http" or not sep:
                raise ConfigError(f"{what}: {option!r} after ';' must be http=http://HOST:HTTP_PORT")
            http = parse_http_url(value, f"{what}, http=")
        members.append(Member(_name(name, f"PEERS entry {n + 1}"), host, port, http))
    return members


def load(env: Mapping[str, str] | None = None) -> NodeConfig:
    """Build and check the configuration; raises ConfigError naming what to fix."""
    env = os.environ if env is None else env
    node_id = _name(env.get("NODE_ID", ""), "NODE_ID")
    grpc_default: int | None = None
    self_url = env.get("SELF_URL", "").strip()
    if self_url:
        self_host, self_port = parse_member_url(self_url, "SELF_URL")
        grpc_default = self_port
    grpc_port = _port(env, "GRPC_PORT", grpc_default)
    if not self_url:
        self_host, self_port = "127.0.0.1", grpc_port
    http_port = _port(env, "HTTP_PORT", 8001)
    me = Member(node_id, self_host, self_port, f"http://{self_host}:{http_port}")

    members: dict[str, Member] = {me.name: me}
    seen_addresses = {me.address: me.name}
    for peer in parse_peers(env.get("PEERS", "")):
        if peer.name == node_id:
            if peer.address != me.address:
                raise ConfigError(
                    f"PEERS lists {node_id} at {peer.address} but SELF_URL says {me.address}: "
                    "SELF_URL is missing from the membership; make them agree"
                )
            if peer.http is not None:
                members[node_id] = peer
            continue
        if peer.name in members:
            raise ConfigError(f"PEERS names {peer.name!r} twice; each member must appear once")
        if peer.address in seen_addresses:
            raise ConfigError(
                f"PEERS gives {peer.name!r} the address {peer.address} of "
                f"{seen_addresses[peer.address]!r}; every member needs its own address"
            )
        members[peer.name] = peer
        seen_addresses[peer.address] = peer.name

    quorum_raw = env.get("QUORUM", "").strip()
    if quorum_raw:
        need = majority(len(members))
        if not _whole(quorum_raw) or int(quorum_raw) != need:
            raise ConfigError(
                f"QUORUM={quorum_raw!r} but {len(members)} members make a majority of {need}; "
                f"Raft's quorum is always the majority: set QUORUM={need} or leave it unset"
            )

    appendfsync = env.get("REDIS_APPENDFSYNC", "always").strip() or "always"
    if appendfsync not in APPENDFSYNC_MODES:
        raise ConfigError(f"REDIS_APPENDFSYNC={appendfsync!r} must be one of {APPENDFSYNC_MODES}")
    cache_policy = env.get("CACHE_POLICY", "lru").strip().lower() or "lru"
    if cache_policy not in CACHE_POLICIES:
        raise ConfigError(f"CACHE_POLICY={cache_policy!r} must be one of {CACHE_POLICIES}")
    metrics_port = _port(env, "METRICS_PORT", 9001)
    ports = {"GRPC_PORT": grpc_port, "HTTP_PORT": http_port, "METRICS_PORT": metrics_port}
    if len(set(ports.values())) != len(ports):
        raise ConfigError(f"GRPC_PORT, HTTP_PORT and METRICS_PORT must differ, got {ports}")
    return NodeConfig(
        node_id=node_id,
        members=tuple(sorted(members.values(), key=lambda m: m.name)),
        bind_host=env.get("BIND_HOST", "127.0.0.1").strip() or "127.0.0.1",
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        redis_url=_redis_url(env.get("REDIS_URL", "").strip()),
        data_dir=Path(env.get("DATA_DIR", "").strip() or f".data/{node_id}"),
        cluster=_name(env.get("CLUSTER_NAME", "dsync"), "CLUSTER_NAME"),
        cluster_token=_token(env.get("CLUSTER_TOKEN")),
        appendfsync=appendfsync,
        tick_ms=_int(env, "TICK_MS", 50, 1, 10_000),
        election_ticks=_int(env, "ELECTION_TICKS", 10, 2, 1000),
        snapshot_entries=_int(env, "SNAPSHOT_ENTRIES", 100_000, 100, 100_000_000),
        snapshot_catchup_entries=_int(env, "SNAPSHOT_CATCHUP_ENTRIES", 5_000, 0, 100_000_000),
        cache_max_entries=_int(env, "CACHE_MAX_ENTRIES", 100_000, 1, 100_000_000),
        cache_max_bytes=_int(env, "CACHE_MAX_BYTES", 256 << 20, 1024, 1 << 40),
        cache_policy=cache_policy,
    )
