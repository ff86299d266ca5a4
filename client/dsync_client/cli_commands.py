"""The CLI's commands: each takes the client and parsed arguments and returns an Output.

Errors are not handled here: a DsyncError propagates to cli.main, which prints it and
exits with its code.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli_output import Exit, Output
from .client import Client
from .errors import DsyncError
from .queue_ops import Delivery, Outgoing
from .values import JSON, Body


class UsageError(Exception):
    """A command-line value the CLI cannot use; exits with Exit.USAGE."""


def status(client: Client, args: argparse.Namespace) -> Output:
    """Every endpoint's own view, like `etcdctl endpoint status`: a node that does not
    answer is a row too, and makes the exit code UNAVAILABLE."""
    rows: list[list[object]] = []
    data: list[dict[str, object]] = []
    for endpoint in client.cluster.endpoints:
        try:
            s = client.cluster.status(endpoint)
        except DsyncError as error:
            rows.append([endpoint, "-", "unreachable", "-", "-", "-", "-"])
            data.append({"endpoint": endpoint, "error": error.message})
            continue
        rows.append([endpoint, s.node, s.role, s.term, s.leader or "-", s.commit_index, s.applied_index])
        data.append({"endpoint": endpoint, "node": s.node, "role": s.role, "term": s.term, "leader": s.leader,
                     "commit_index": s.commit_index, "applied_index": s.applied_index})
    failed = [f"{d['endpoint']}: {d['error']}" for d in data if "error" in d]
    code = Exit.UNAVAILABLE if failed else Exit.OK
    headers = ["ENDPOINT", "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED"]
    return Output(data, headers, rows, code=code, notes=failed)


def members(client: Client, args: argparse.Namespace) -> Output:
    found = client.cluster.members()
    rows = [[m.id, m.address, m.is_leader, m.last_contact] for m in found]
    return Output(found, ["ID", "ADDRESS", "LEADER", "LAST-CONTACT-S"], rows)


def lock_acquire(client: Client, args: argparse.Namespace) -> Output:
    g = client.locks.acquire(args.resource, args.owner, mode=args.mode, timeout=args.wait, ttl=args.ttl)
    return Output(
        g,
        ["RESOURCE", "OWNER", "MODE", "TOKEN", "TTL-S", "EXPIRES-IN-S"],
        [[g.resource, g.owner, g.mode, g.token, g.ttl, g.expires_in]],
    )


def lock_release(client: Client, args: argparse.Namespace) -> Output:
    token = client.locks.release(args.resource, args.owner)
    data = {"resource": args.resource, "owner": args.owner, "token": token}
    return Output(data, ["RESOURCE", "OWNER", "RELEASED-TOKEN"], [[args.resource, args.owner, token]])


def lock_list(client: Client, args: argparse.Namespace) -> Output:
    locks = client.locks.list(args.prefix, consistency=args.consistency)
    rows = [
        [
            lock.resource,
            lock.mode,
            ", ".join(f"{h.owner} (token {h.token})" for h in lock.holders) or "-",
            len(lock.waiters),
        ]
        for lock in locks
    ]
    empty = f"no locks held or waited for{f' under {args.prefix!r}' if args.prefix else ''}"
    return Output(locks, ["RESOURCE", "MODE", "HOLDERS", "WAITERS"], rows, empty=empty)


def lock_get(client: Client, args: argparse.Namespace) -> Output:
    lock = client.locks.get(args.resource, consistency=args.consistency)
    rows: list[list[object]] = [["holder", h.owner, lock.mode, h.token, h.expires_in] for h in lock.holders]
    for w in lock.waiters:
        rows.append(["waiter (upgrade)" if w.upgrade else "waiter", w.owner, w.mode, None, w.expires_in])
    title = f"{lock.resource}: {lock.mode}"
    return Output(lock, ["ROLE", "OWNER", "MODE", "TOKEN", "EXPIRES-IN-S"], rows, title=title,
                  empty="(no holders, no waiters)")


def queue_publish(client: Client, args: argparse.Namespace) -> Output:
    texts: list[str] = args.body or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise UsageError("nothing to publish: give BODY arguments, or lines on standard input")
    if args.id and len(texts) > 1:
        raise UsageError("--id names one message: publish one BODY at a time with --id")
    bodies = [body_from_text(text, args.raw) for text in texts]
    queue = client.queue(args.topic)
    if len(bodies) == 1:
        results = [queue.publish(bodies[0], id=args.id, delay=args.delay, max_deliveries=args.max_deliveries)]
    else:
        results = queue.publish_batch(Outgoing(b, "", args.delay, args.max_deliveries) for b in bodies)
    return Output(results, ["ID", "DUPLICATE"], [[r.id, r.duplicate] for r in results])


def queue_consume(client: Client, args: argparse.Namespace) -> Output:
    queue = client.queue(args.topic)
    messages = queue.receive(
        args.consumer, max_messages=args.max, visibility_timeout=args.visibility_timeout, wait=args.wait
    )
    for message in messages if args.ack else []:
        message.ack()
    deliveries: list[Delivery] = [m.delivery for m in messages]
    rows = [[d.id, d.delivery_count, d.receipt, shown(d.body)] for d in deliveries]
    code = Exit.OK if deliveries else Exit.NOT_FOUND
    return Output(deliveries, ["ID", "DELIVERY", "RECEIPT", "BODY"], rows, empty="(no message ready)", code=code)


def queue_ack(client: Client, args: argparse.Namespace) -> Output:
    client.queue(args.topic).ack(args.id, receipt=args.receipt)
    data = {"topic": args.topic, "id": args.id, "acked": True}
    return Output(data, ["TOPIC", "ID", "ACKED"], [[args.topic, args.id, True]])


def queue_stats(client: Client, args: argparse.Namespace) -> Output:
    s = client.queue(args.topic).stats(consistency=args.consistency)
    rows = [[args.topic, s.ready, s.in_flight, s.delayed, s.dead_lettered, s.oldest_age]]
    by_consumer = ", ".join(f"{name}: {count}" for name, count in sorted(s.in_flight_by_consumer.items()))
    return Output(
        s,
        ["TOPIC", "READY", "IN-FLIGHT", "DELAYED", "DEAD-LETTERED", "OLDEST-AGE-S"],
        rows,
        notes=[f"in flight by consumer: {by_consumer}"] if by_consumer else [],
    )


def cache_get(client: Client, args: argparse.Namespace) -> Output:
    entry = client.cache.get(args.key, consistency=args.consistency)
    if entry is None:
        return Output({"key": args.key, "found": False}, empty=f"{args.key}: not found", code=Exit.NOT_FOUND)
    data = {"key": entry.key, "found": True, "value": entry.value, "version": entry.version}
    return Output(data, ["KEY", "VERSION", "VALUE"], [[entry.key, entry.version, shown(entry.value)]])


def cache_put(client: Client, args: argparse.Namespace) -> Output:
    value: JSON = args.value if args.string else json_from_text(args.value, "VALUE")
    version = client.cache.put(args.key, value, ttl=args.ttl)
    return Output({"key": args.key, "version": version}, ["KEY", "VERSION"], [[args.key, version]])


def cache_invalidate(client: Client, args: argparse.Namespace) -> Output:
    gone = client.cache.invalidate(args.key)
    data = {"key": args.key, "existed": gone.existed, "version": gone.version, "index": gone.index}
    return Output(data, ["KEY", "EXISTED", "VERSION", "INDEX"], [[args.key, gone.existed, gone.version, gone.index]])


def shown(body: Body) -> str:
    """A body for a table: JSON as compact JSON (so "7" and 7 differ), bytes as text."""
    if isinstance(body, bytes):
        return body.decode(errors="replace")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def json_from_text(text: str, what: str) -> JSON:
    try:
        value: JSON = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(
            f"{what} must be JSON, e.g. '\"hello\"', 42 or '{{\"a\": 1}}' (got {text!r}); "
            "pass --string to store it as text"
        ) from None
    return value


def body_from_text(text: str, raw: bool) -> Body:
    return text.encode() if raw else json_from_text(text, "BODY")
