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
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# How much of a log's end `log_tail` reads: logs grow across runs.
_TAIL_BYTES = 64 * 1024


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


def log_tail(path: Path, lines: int, start: int = 0) -> str:
    """The last `lines` lines a child wrote to its log at or after byte `start` (where its
    run began, when runs share the file), reading at most the log's last 64 KiB; "(no
    log)" if it cannot be read.  What a parent shows when a child fails."""
    try:
        with open(path, "rb") as log:
            log.seek(max(start, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
