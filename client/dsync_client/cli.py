"""`dsync`: an etcdctl-like command line for a dsync cluster.

    dsync status                                  every endpoint's Raft state
    dsync members
    dsync lock acquire|release|list|get ...
    dsync queue publish|consume|ack|stats ...
    dsync cache get|put|invalidate ...

--endpoints (or $DSYNC_ENDPOINTS) names the nodes, --output json prints one JSON document
for scripts, and the exit code says what happened (see cli_output.Exit).
"""

from __future__ import annotations

import argparse
import getpass
import math
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from . import cli_commands as commands
from .cli_output import Exit, Output, error_document, exit_code, hint, render
from .client import Client
from .endpoints import ENV_VAR, parse_endpoints
from .errors import DsyncError
from .retry import check_seconds

Command = Callable[[Client, argparse.Namespace], Output]

EXIT_CODES_HELP = """exit codes:
  0  ok                       4  lock busy, or waiting would deadlock
  1  unexpected error         5  not held / version mismatch / stale receipt
  2  bad usage or argument    6  unavailable: no leader or no node answered; retry
  3  not found / empty        7  overloaded or full: back off
"""


def default_owner() -> str:
    """Who a lock belongs to when --owner is not given: the same in every shell of one
    user on one host, so `lock acquire` and a later `lock release` match."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def finite(text: str) -> float:
    """A number of seconds for the server to judge, but never NaN or infinite: no
    deadline can be computed from those, so the call would never end."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text}")
    return value


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the command.  Leaf parsers use SUPPRESS defaults
    so they never overwrite a value given before the command."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--endpoints",
        default=default(None),
        help=f"comma-separated host:port of the nodes (default: ${ENV_VAR}, else 127.0.0.1:50051-50053)",
    )
    parser.add_argument(
        "-o", "--output", choices=["table", "json"], default=default("table"), help="table for people, json for scripts"
    )
    parser.add_argument(
        "--timeout", type=float, default=default(10.0), help="seconds per call, retries included (default 10)"
    )
    return parser


# What add_subparsers returns; generic only to type checkers, hence the string.
Group: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsync",
        description="Talk to a dsync cluster: locks, queues, cache, cluster state.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    leaves = Leaves(_global_options(suppress=True))
    leaves.add(top, "status", commands.status, "each endpoint's Raft state (exit 6 if one does not answer)")
    leaves.add(top, "members", commands.members, "the cluster's members, as a node sees them")
    _lock_commands(leaves, _group(top, "lock", "distributed locks"))
    _queue_commands(leaves, _group(top, "queue", "work queues"))
    _cache_commands(leaves, _group(top, "cache", "replicated cache"))
    return parser


class Leaves:
    """Adds commands that run something, each accepting the global options too."""

    def __init__(self, common: argparse.ArgumentParser) -> None:
        self._common = common

    def add(self, group: Group, name: str, run: Command, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=text, description=text, parents=[self._common])
        sub.set_defaults(run=run)
        return sub


def _group(top: Group, name: str, text: str) -> Group:
    parser: argparse.ArgumentParser = top.add_parser(name, help=text)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def _read_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--consistency",
        choices=["linearizable", "local"],
        default="linearizable",
        help="linearizable (default) or local: the answering node's replica, may lag",
    )


def _lock_commands(leaves: Leaves, group: Group) -> None:
    sub = leaves.add(group, "acquire", commands.lock_acquire, "take a lock (held until released or its ttl passes)")
    sub.add_argument("resource")
    sub.add_argument("--owner", default=default_owner(), help="who holds it (default: USER@HOST)")
    sub.add_argument("--mode", choices=["exclusive", "shared"], default="exclusive")
    sub.add_argument("--wait", type=finite, default=0.0, help="seconds to wait for a busy lock (default 0)")
    sub.add_argument("--ttl", type=finite, default=30.0, help="lease in seconds (default 30)")
    sub = leaves.add(group, "release", commands.lock_release, "give a lock up")
    sub.add_argument("resource")
    sub.add_argument("--owner", default=default_owner(), help="who holds it (default: USER@HOST)")
    sub = leaves.add(group, "list", commands.lock_list, "locks held or waited for")
    sub.add_argument("--prefix", default="", help="only resources starting with this")
    _read_option(sub)
    sub = leaves.add(group, "get", commands.lock_get, "one resource's holders and waiters")
    sub.add_argument("resource")
    _read_option(sub)


def _queue_commands(leaves: Leaves, group: Group) -> None:
    sub = leaves.add(group, "publish", commands.queue_publish, "publish (several BODYs or stdin lines: one batch)")
    sub.add_argument("topic")
    sub.add_argument("body", nargs="*", help="JSON bodies (default: one per line of standard input)")
    sub.add_argument("--raw", action="store_true", help="bodies are bytes, not JSON")
    sub.add_argument("--id", default="", help="idempotency id (one message only)")
    sub.add_argument("--delay", type=finite, default=0.0, help="seconds before the message is ready")
    sub.add_argument("--max-deliveries", type=int, default=0, help="deliveries before dead-lettering (default 5)")
    sub = leaves.add(group, "consume", commands.queue_consume, "take messages (exit 3 if none was ready)")
    sub.add_argument("topic")
    sub.add_argument("--consumer", default="dsync-cli", help="consumer name shown in stats (default dsync-cli)")
    sub.add_argument("--max", type=int, default=1, help="at most this many messages (default 1)")
    sub.add_argument("--wait", type=finite, default=0.0, help="seconds to wait for a message (at most 20)")
    sub.add_argument("--visibility-timeout", type=finite, default=30.0, help="seconds in flight (default 30)")
    sub.add_argument("--ack", action="store_true", help="ack what was taken (else ack it later with `queue ack`)")
    sub = leaves.add(group, "ack", commands.queue_ack, "remove a delivered message")
    sub.add_argument("topic")
    sub.add_argument("id")
    sub.add_argument("--receipt", default="", help="the delivery's receipt: refuse if it was redelivered since")
    sub = leaves.add(group, "stats", commands.queue_stats, "count a topic's messages by state")
    sub.add_argument("topic")
    _read_option(sub)


def _cache_commands(leaves: Leaves, group: Group) -> None:
    sub = leaves.add(group, "get", commands.cache_get, "read a key (exit 3 on a miss)")
    sub.add_argument("key")
    _read_option(sub)
    sub = leaves.add(group, "put", commands.cache_put, "store a JSON value")
    sub.add_argument("key")
    sub.add_argument("value", help="a JSON value, e.g. 42 or '{\"a\": 1}'")
    sub.add_argument("--string", action="store_true", help="store VALUE as a string, not JSON")
    sub.add_argument("--ttl", type=finite, default=0.0, help="seconds until it expires (default: never)")
    sub = leaves.add(group, "invalidate", commands.cache_invalidate, "remove a key")
    sub.add_argument("key")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        endpoints = parse_endpoints(args.endpoints)
        check_seconds("--timeout", args.timeout)
    except ValueError as exc:
        print(f"dsync: {exc}", file=sys.stderr)
        return Exit.USAGE
    try:
        with Client(endpoints, timeout=args.timeout) as client:
            output: Output = args.run(client, args)
    except commands.UsageError as exc:
        print(f"dsync: {exc}", file=sys.stderr)
        return Exit.USAGE
    except DsyncError as error:
        print(f"dsync: {type(error).__name__}: {error.message}", file=sys.stderr)
        if (advice := hint(error)) is not None:
            print(f"dsync: hint: {advice}", file=sys.stderr)
        if args.output == "json":
            print(error_document(error))
        return exit_code(error)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    print(render(output, args.output))
    return output.code
