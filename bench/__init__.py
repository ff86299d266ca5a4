"""Benchmarks, each printing its figures next to a floor measured in the same run (README)."""

import os

# A benchmark measures its gRPC floor in this process, then starts the cluster's nodes:
# with gRPC's fork support on, a child forked while gRPC's threads run can die before it
# execs (grpc/grpc#43055).  The children exec at once, so fork support is of no use.
# Read when grpc is imported, so it is set here, before any benchmark module imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
