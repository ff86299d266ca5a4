"""The HTTP client of the gateway benchmark and of its floor: one keep-alive HTTP/1.1
connection, one JSON POST at a time.

The load generator runs on the same two cores as the nodes it loads, so every microsecond
it spends is taken from them.  aiohttp's client costs 110-190 us of CPU per request here
(ClientSession's per-request machinery: timers, tracing, cookies, URL handling, response
objects), about four times this one; driving 2,000 requests/s with it used 0.38 of the
machine's 2 cores, and the figure measured the client as much as the nodes.  This client
does what a benchmark tool such as wrk does: it writes the request in one piece, reads the
status line and headers, and reads exactly `Content-Length` bytes of body -- which is
everything the gateway (aiohttp's server) answers.  Anything else (a chunked body, a
closed connection, a malformed head) raises `HttpError`; the connection is then closed and
the next call opens a new one.
"""

from __future__ import annotations

import asyncio

_HEAD_END = b"\r\n\r\n"
_LENGTH = b"content-length:"


class HttpError(Exception):
    """The exchange failed; the connection has been closed."""


class HttpConnection:
    """A keep-alive connection to one HTTP/1.1 server, opened on first use."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._prefix = f"Host: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: "
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, base_url: str) -> HttpConnection:
        """A connection for `http://host:port`."""
        host, _, port = base_url.removeprefix("http://").rstrip("/").rpartition(":")
        return cls(host, int(port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` (JSON) to `path`; return the status code and the response body."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.write(f"POST {path} HTTP/1.1\r\n{self._prefix}{len(body)}\r\n\r\n".encode() + body)
            head = await self._reader.readuntil(_HEAD_END)
            status = int(head[9:12])
            return status, await self._reader.readexactly(_content_length(head))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        except BaseException:  # cancelled or timed out mid-exchange: the stream is out of step
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _content_length(head: bytes) -> int:
    at = head.lower().find(_LENGTH)
    if not head.startswith(b"HTTP/1.1 ") or at < 0:
        raise ValueError(f"not an HTTP/1.1 answer with a Content-Length: {head[:200]!r}")
    return int(head[at + len(_LENGTH) : head.index(b"\r\n", at)])
