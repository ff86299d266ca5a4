"""The HTTP client of the gateway benchmark and of its floor: one keep-alive HTTP/1.1
connection, one JSON POST at a time.

The load generator runs on the same two cores as the nodes it loads, so every microsecond
it spends is taken from them.  With aiohttp's ClientSession (timers, tracing, cookies, URL
handling and response objects on every request) the benchmark's load generator used 0.38
cores for 2,000 requests/s, 190 us a request, and the figure measured the client as much
as the nodes; with this client it uses 0.15 cores for 3,100 requests/s, 48 us a request
(JSON encoding and the benchmark's bookkeeping included) -- bench_gateway prints both
figures in its CPU line.

This client does what a benchmark tool such as wrk does: it writes the request in one
piece, reads the status line and headers, reads exactly `Content-Length` bytes of body,
and closes the connection after an answer that says `Connection: close` -- which covers
everything the gateway (aiohttp's server) answers.  Anything else (a chunked body, a
connection closed mid-answer, a malformed head) raises `HttpError`; the connection is
then closed and the next call opens a new one.
"""

from __future__ import annotations

import asyncio

_HEAD_END = b"\r\n\r\n"


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
            status, length, close = _parse_head(await self._reader.readuntil(_HEAD_END))
            answer = await self._reader.readexactly(length)
            if close:
                self.close()
            return status, answer
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


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length, and whether the server closes the connection after this answer."""
    status_line, *lines = head[: -len(_HEAD_END)].split(b"\r\n")
    if not status_line.startswith(b"HTTP/1.1 "):
        raise ValueError(f"not an HTTP/1.1 answer: {status_line[:100]!r}")
    length: int | None = None
    close = False
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError(f"malformed header line {line[:100]!r}")
        name = name.strip().lower()
        if name == b"content-length":
            if length is not None:
                raise ValueError("two Content-Length headers")
            length = int(value)
        elif name == b"connection":
            close = b"close" in value.lower()
    if length is None:
        raise ValueError(f"no Content-Length (chunked?): {status_line[:100]!r}")
    return int(status_line[9:12]), length, close
