"""What a CLI command prints: a table for people, one JSON document for scripts, and
the exit code scripts branch on."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from .errors import (
    Deadlock,
    DsyncError,
    FailedPrecondition,
    InvalidArgument,
    LockConflict,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    Unavailable,
)


class Exit(IntEnum):
    """Exit codes, stable for scripts."""

    OK = 0
    ERROR = 1  # anything else: a bug, or an unexpected server answer
    USAGE = 2  # bad flags or arguments, or the server called a field invalid
    NOT_FOUND = 3  # cache miss, nothing to consume, no such message
    CONFLICT = 4  # the lock stayed busy (or waiting would deadlock)
    PRECONDITION = 5  # lock not held by that owner, version mismatch, stale receipt
    UNAVAILABLE = 6  # no leader or no node answered in time, or a retry's outcome is unknown: retry later
    OVERLOADED = 7  # the cluster sheds load or a capacity is reached: back off
    INTERRUPTED = 130  # Ctrl-C


_CODES: list[tuple[type[DsyncError], Exit]] = [
    (InvalidArgument, Exit.USAGE),
    (NotFound, Exit.NOT_FOUND),
    (LockConflict, Exit.CONFLICT),
    (FailedPrecondition, Exit.PRECONDITION),
    (Unavailable, Exit.UNAVAILABLE),
    (OutcomeUnknown, Exit.UNAVAILABLE),
    (Overloaded, Exit.OVERLOADED),
]


def exit_code(error: DsyncError) -> Exit:
    return next((code for kind, code in _CODES if isinstance(error, kind)), Exit.ERROR)


@dataclass
class Output:
    """`data` is printed by --output json; `headers` and `rows` make the table, after an
    optional `title` line; `empty` replaces a table without rows."""

    data: object
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[object]] = ()
    title: str = ""
    empty: str = ""
    code: Exit = Exit.OK
    notes: list[str] = field(default_factory=list)


def render(output: Output, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(jsonable(output.data), indent=2, sort_keys=False)
    parts = [output.title] if output.title else []
    if output.rows:
        parts.append(table(output.headers, output.rows))
    elif output.empty:
        parts.append(output.empty)
    parts += output.notes
    return "\n".join(parts)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers)] + [[cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells)


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def jsonable(data: object) -> object:
    """Dataclasses as objects, bytes as {"raw": base64}, recursively."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return {f.name: jsonable(getattr(data, f.name)) for f in dataclasses.fields(data)}
    if isinstance(data, bytes):
        return {"raw": base64.b64encode(data).decode()}
    if isinstance(data, dict):
        return {str(k): jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [jsonable(item) for item in data]
    return data


_HINTS: list[tuple[type[DsyncError], str]] = [
    (Deadlock, "release a lock in the cycle, or take locks in one global order"),
    (LockConflict, "pass --wait SECONDS to wait for the lock"),
    (Unavailable, "check --endpoints (or $DSYNC_ENDPOINTS) and `dsync status`"),
]


def hint(error: DsyncError) -> str | None:
    """What to try next on the command line, where the server's advice names API fields."""
    return next((text for kind, text in _HINTS if isinstance(error, kind)), None)


def error_document(error: DsyncError) -> str:
    code = error.code.name if error.code is not None else None
    return json.dumps({"error": {"type": type(error).__name__, "code": code, "message": error.message}}, indent=2)
