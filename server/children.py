"""Child processes that never outlive the process that started them.

A node starts its private redis-server and the launcher starts the nodes; if the parent
is killed outright (SIGKILL, a crashed test run), its children would otherwise run on,
holding ports, data dirs and CPU.  Linux's `PR_SET_PDEATHSIG` signals them instead;
elsewhere a child may outlive a parent killed outright.

A process that starts children while gRPC's threads run needs GRPC_ENABLE_FORK_SUPPORT=false
before it imports grpc: with fork support on, the fork restarts gRPC's poller in the child,
which can kill it before it execs (grpc/grpc#43055).  Tests and benchmarks set it; a node
starts its redis-server before it starts any gRPC, and the launcher uses none.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux
    return prctl


# Looked up once here, not in each child: a child forked from a threaded parent (gRPC's
# threads) must not load or look up symbols, whose locks another thread may have held.
_PRCTL = _resolve_prctl()


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn`, made in the parent, that SIGTERMs the child when the thread that
    forked it ends.

    Our children are started from a process's event-loop thread, which lives as long as
    the process, so in effect: when this process goes away, even by SIGKILL.  A parent
    already gone by the time the child gets here would never signal it, so the child then
    exits at once.
    """
    parent = os.getpid()

    def tie() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)

    return tie
