"""A minimal replicated key-value map: the simplest real state machine to drive the replica with.

Kept as small as a state machine can be while still exercising everything the runtime
relies on: deterministic results, error results instead of exceptions, exact snapshots.

Commands (byte layouts, integers big-endian):
    PUT     b"P" | key length u16 | key UTF-8 | value bytes (the rest)
    DELETE  b"D" | key length u16 | key UTF-8
Results: PUT returns the key's new version, which is the log index that wrote it;
DELETE returns the version the key had (0 if it was absent); a malformed command
returns a `KvError` and changes nothing.

Snapshot: b"KV1" | count u32 | per key, in key order: key length u16 | key |
version u64 | value length u32 | value.  Key order makes equal states give equal bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

_PUT = ord("P")
_DELETE = ord("D")
_KEY_LEN = struct.Struct(">H")
_VERSION_AND_VALUE_LEN = struct.Struct(">QI")
_COUNT = struct.Struct(">I")
_MAGIC = b"KV1"
MAX_KEY_BYTES = (1 << 16) - 1


@dataclass(frozen=True, slots=True)
class KvError:
    """Why a command was refused; every replica refuses it the same way."""

    reason: str


def encode_put(key: str, value: bytes) -> bytes:
    return bytes([_PUT]) + _encode_key(key) + value


def encode_delete(key: str) -> bytes:
    return bytes([_DELETE]) + _encode_key(key)


def _encode_key(key: str) -> bytes:
    raw = key.encode()
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"key is {len(raw)} bytes in UTF-8; keys are at most {MAX_KEY_BYTES} bytes")
    return _KEY_LEN.pack(len(raw)) + raw


class KvStateMachine:
    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}  # key -> (value, version)

    def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, version), or None if absent.  Local: call `read_barrier` first for a linearizable read."""
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def apply(self, index: int, command: bytes) -> int | KvError:
        if not command:
            return KvError("empty command")
        op = command[0]
        if op not in (_PUT, _DELETE):
            return KvError(f"unknown operation {command[:1]!r}; expected b'P' (put) or b'D' (delete)")
        if len(command) < 1 + _KEY_LEN.size:
            return KvError("command too short to hold a key length")
        (key_len,) = _KEY_LEN.unpack_from(command, 1)
        end = 1 + _KEY_LEN.size + key_len
        if len(command) < end:
            return KvError(f"key length {key_len} runs past the end of the command")
        try:
            key = command[1 + _KEY_LEN.size : end].decode()
        except UnicodeDecodeError:
            return KvError("key is not valid UTF-8")
        if op == _PUT:
            self._data[key] = (command[end:], index)
            return index
        if len(command) != end:
            return KvError("delete carries bytes after its key")
        old = self._data.pop(key, None)
        return old[1] if old is not None else 0

    def snapshot(self) -> bytes:
        parts = [_MAGIC, _COUNT.pack(len(self._data))]
        for key in sorted(self._data):
            value, version = self._data[key]
            parts.append(_encode_key(key))
            parts.append(_VERSION_AND_VALUE_LEN.pack(version, len(value)))
            parts.append(value)
        return b"".join(parts)

    def prepare_restore(self, data: bytes) -> Callable[[], None]:
        """A corrupt snapshot raises ValueError here, and changes nothing."""
        decoded = _decode_snapshot(data)

        def install() -> None:
            self._data = decoded

        return install


def _decode_snapshot(data: bytes) -> dict[str, tuple[bytes, int]]:
    view = memoryview(data)
    if bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise ValueError("not a key-value snapshot (bad magic); was it written by another state machine?")
    pos = len(_MAGIC)
    try:
        (count,) = _COUNT.unpack_from(view, pos)
        pos += _COUNT.size
        state: dict[str, tuple[bytes, int]] = {}
        for _ in range(count):
            (key_len,) = _KEY_LEN.unpack_from(view, pos)
            pos += _KEY_LEN.size
            key = bytes(view[pos : pos + key_len]).decode()
            pos += key_len
            version, value_len = _VERSION_AND_VALUE_LEN.unpack_from(view, pos)
            pos += _VERSION_AND_VALUE_LEN.size
            if pos + value_len > len(view):
                raise ValueError("value runs past the end")
            state[key] = (bytes(view[pos : pos + value_len]), version)
            pos += value_len
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"corrupt key-value snapshot at byte {pos}: {exc}") from exc
    if pos != len(view) or len(state) != count:
        raise ValueError(f"corrupt key-value snapshot: {len(view) - pos} trailing bytes or duplicate keys")
    return state
