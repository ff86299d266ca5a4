"""dsync's Python client: locks, queues and a cache on a Raft-replicated cluster.

`Client` (blocking, thread-safe) and `AsyncClient` (asyncio) find the leader, fail over
and retry on UNAVAILABLE within a deadline, and stamp every write with a client id and
sequence number so a retried write takes effect once.  Errors are the DsyncError family
in `dsync_client.errors`.  The generated gRPC stubs ship alongside as `dsync.v1`.
"""

from .aio_client import AsyncCache, AsyncClient, AsyncCluster, AsyncLocks
from .aio_locks import AsyncHeldLock, AsyncLockContext
from .aio_queues import AsyncMessage, AsyncQueue
from .cache_ops import Entry, Invalidated
from .client import Cache, Client, Cluster, Locks
from .cluster_ops import Leader, Member, NodeStatus
from .errors import (
    DeadlineExceeded,
    Deadlock,
    DsyncError,
    FailedPrecondition,
    InvalidArgument,
    LockConflict,
    LockLost,
    NotFound,
    NotHeld,
    OutcomeUnknown,
    Overloaded,
    Unavailable,
    VersionMismatch,
)
from .lock_ops import Grant, Holder, LockInfo, Waiter
from .locks import HeldLock, LockContext
from .queue_ops import Delivery, Outgoing, Published, QueueStats
from .queues import Message, Queue
from .retry import RetryPolicy

__all__ = [
    "AsyncCache",
    "AsyncClient",
    "AsyncCluster",
    "AsyncHeldLock",
    "AsyncLockContext",
    "AsyncLocks",
    "AsyncMessage",
    "AsyncQueue",
    "Cache",
    "Client",
    "Cluster",
    "DeadlineExceeded",
    "Deadlock",
    "Delivery",
    "DsyncError",
    "Entry",
    "FailedPrecondition",
    "Grant",
    "HeldLock",
    "Holder",
    "InvalidArgument",
    "Invalidated",
    "Leader",
    "LockConflict",
    "LockContext",
    "LockInfo",
    "LockLost",
    "Locks",
    "Member",
    "Message",
    "NodeStatus",
    "NotFound",
    "NotHeld",
    "OutcomeUnknown",
    "Outgoing",
    "Overloaded",
    "Published",
    "Queue",
    "QueueStats",
    "RetryPolicy",
    "Unavailable",
    "VersionMismatch",
    "Waiter",
]
