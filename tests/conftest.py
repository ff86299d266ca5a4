"""Settings every test process needs before anything imports gRPC."""

from __future__ import annotations

import os

# Tests start node processes and redis-servers while this process has gRPC channels and
# servers running.  With gRPC's fork support on, a child forked meanwhile restarts gRPC's
# poller thread, which kills the child (SIGABRT or SIGSEGV) before it can exec, once the
# fds are closed under it (grpc/grpc#43055; a node "exited with status -6").  Our
# children exec at once and never use gRPC from the fork, so fork support is of no use.
# Read when grpc is imported: this file is imported before any test module.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
