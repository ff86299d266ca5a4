"""The lock service's limits and input rules, in one place for the servicer and the
state machine: the servicer checks requests with them to answer early with a field
name, and the state machine checks commands again, because it must refuse rather than
trust whatever reaches the log (the same way on every replica).

Why these limits: names bound the memory of a lock and the size of every answer that
lists holders; the owners per resource bound GetLock's answer (well under gRPC's 4 MiB)
and the cost of a grant or a deadlock search; a day of lease and an hour of waiting are
far beyond what a coordination lock needs, and keep a forgotten lock from outliving
everyone's memory of it.
"""

from __future__ import annotations

from server.fsm.text_rules import control_character

MAX_NAME_BYTES = 256
DEFAULT_TTL_MS = 30_000
MAX_TTL_MS = 86_400_000  # one day
MAX_TIMEOUT_MS = 3_600_000  # one hour
MAX_OWNERS_PER_LOCK = 1_000  # holders plus waiters of one resource
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000


def name_problem(value: str) -> str | None:
    """What is wrong with a resource or owner name, or None if it is fine."""
    if not value:
        return "required: 1 to 256 bytes of UTF-8"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"{size} bytes of UTF-8; at most {MAX_NAME_BYTES}: use a shorter name (or a hash of it)"
    position = control_character(value)
    if position is not None:
        return f"character {position} is a control character ({ord(value[position]):#x}); names must be printable"
    return None


def duration_problem(ms: int, maximum_ms: int) -> str | None:
    """What is wrong with a duration in milliseconds, or None if it is within bounds."""
    if ms > maximum_ms:
        return f"{ms / 1000:g} s is longer than the limit of {maximum_ms // 1000} s"
    return None
