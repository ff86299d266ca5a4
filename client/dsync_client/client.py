"""The blocking client: `Client(endpoints)` and what hangs off it.

    with Client("127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053") as client:
        with client.lock("r1", timeout=2, ttl=10) as held:
            write_somewhere(fencing_token=held.token)
        client.cache.put("k", {"v": 1})
        client.queue("jobs").publish({"n": 1})

Every call finds the leader, fails over and retries on UNAVAILABLE within the client's
timeout, and every write carries a session id and a fresh sequence number for all its
attempts, so a retried write takes effect once.  Safe to share between threads: writes
in flight together use sessions of their own (session.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType

from . import cache_ops, cluster_ops, lock_ops
from .cache_ops import Entry, Invalidated
from .cluster_ops import Leader, Member, NodeStatus
from .endpoints import parse_endpoints
from .lock_ops import Grant, LockInfo, Mode
from .locks import LockContext
from .ops import ConsistencyName
from .queues import Queue
from .retry import RetryPolicy
from .session import SessionPool
from .transport import Transport
from .values import JSON


class Client:
    """A connection to a dsync cluster.

    `endpoints`: host:port addresses, as a list or comma-separated (default:
    $DSYNC_ENDPOINTS, else the local cluster's 127.0.0.1:50051-50053).  `timeout`: seconds
    a call may take, retries included, beyond any wait it asks the server for (default:
    `retry.timeout`, 10).  `retry` tunes the backoff; `client_id` names this client in the
    server's sessions (at most 120 bytes; writes in flight together use `<client_id>#<n>`
    too) and is random by default (two clients must never share one).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        client_id: str | None = None,
    ) -> None:
        policy = retry or RetryPolicy()
        if timeout is not None:
            policy = replace(policy, timeout=timeout)
        self._transport = Transport(parse_endpoints(endpoints), policy, SessionPool(client_id))
        self.locks = Locks(self._transport)
        self.cache = Cache(self._transport)
        self.cluster = Cluster(self._transport)

    @property
    def client_id(self) -> str:
        return self._transport.sessions.client_id

    def lock(
        self,
        resource: str,
        *,
        mode: Mode = "exclusive",
        timeout: float = 0.0,
        ttl: float = 30.0,
        owner: str | None = None,
    ) -> LockContext:
        """A context manager holding `resource` for its block.

        Waits up to `timeout` seconds for a busy lock (LockConflict after that, Deadlock
        at once if waiting would close a cycle).  The lease (`ttl` seconds) is refreshed
        every ttl/3 in the background; `held.lost` is set if that fails.  Released on exit,
        exceptions included.  `owner` defaults to a name unique to this block, so two
        blocks never share a hold, even in one thread.
        """
        return LockContext(self._transport, resource, owner, mode, timeout, ttl)

    def queue(self, topic: str) -> Queue:
        """Publish to and consume from `topic`."""
        return Queue(self._transport, topic)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Locks:
    """The lock calls themselves, for holds that outlive a `with` block (or a process)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def acquire(
        self, resource: str, owner: str, *, mode: Mode = "exclusive", timeout: float = 0.0, ttl: float = 0.0
    ) -> Grant:
        """Take `resource` for `owner`, waiting up to `timeout` s; the lease lasts `ttl` s
        (0: the server's 30) unless refreshed or released."""
        return self._t.run(lock_ops.acquire(resource, owner, mode, timeout, ttl))

    def release(self, resource: str, owner: str) -> int:
        """Give the lock up; returns the fencing token of the grant that ended.  NotHeld
        if `owner` does not hold it."""
        return self._t.run(lock_ops.release(resource, owner))

    def refresh(self, resource: str, owner: str, *, ttl: float = 0.0) -> Grant:
        """Renew the lease for `ttl` s from now (0: its current ttl).  NotHeld if lost."""
        return self._t.run(lock_ops.refresh(resource, owner, ttl))

    def validate(self, resource: str, owner: str, token: int, *, consistency: ConsistencyName = "linearizable") -> bool:
        """Whether `owner` still holds `resource` under exactly this fencing token."""
        return self._t.run(lock_ops.validate(resource, owner, token, consistency))

    def get(self, resource: str, *, consistency: ConsistencyName = "linearizable") -> LockInfo:
        """The resource's holders and waiters (a free resource has neither)."""
        return self._t.run(lock_ops.get(resource, consistency))

    def list(self, prefix: str = "", *, consistency: ConsistencyName = "linearizable") -> list[LockInfo]:
        """Every resource held or waited for whose name starts with `prefix`, by name."""
        locks: list[LockInfo] = []
        token = ""
        while True:
            page, token = self._t.run(lock_ops.page(prefix, token, consistency))
            locks += page
            if not token:
                return locks


class Cache:
    """The replicated cache of JSON values."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, key: str, *, consistency: ConsistencyName = "linearizable") -> Entry | None:
        """The entry, or None on a miss.  "local" reads the answering node's replica
        without a round trip to the leader, and may lag."""
        return self._t.run(cache_ops.get(key, consistency))

    def put(self, key: str, value: JSON, *, ttl: float = 0.0) -> int:
        """Store `value` (expiring after `ttl` s of cluster time; 0: never); returns its version."""
        return self._t.run(cache_ops.put(key, value, ttl))

    def invalidate(self, key: str) -> Invalidated:
        """Remove the key, present or not."""
        return self._t.run(cache_ops.invalidate(key))

    def compare_and_set(self, key: str, value: JSON, *, expected_version: int, ttl: float = 0.0) -> int:
        """Store `value` only if the key is at `expected_version` (0: absent); returns the
        new version.  VersionMismatch otherwise (its message names the current version)."""
        return self._t.run(cache_ops.compare_and_set(key, expected_version, value, ttl))


class Cluster:
    """What the nodes say about the cluster."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @property
    def endpoints(self) -> list[str]:
        return self._t.endpoints.addresses

    def status(self, endpoint: str | None = None) -> NodeStatus:
        """The Raft state of `endpoint` (one attempt, no failover), or of any node that answers."""
        op = cluster_ops.status()
        return self._t.run(op) if endpoint is None else self._t.run_on(endpoint, op)

    def members(self) -> list[Member]:
        return self._t.run(cluster_ops.members())

    def leader(self) -> Leader:
        return self._t.run(cluster_ops.leader())

