"""Every HTTP error the gateway sends has one JSON shape, whatever produced it.

    {"code": 10, "status": "ABORTED", "message": "...", "details": []}

`code` and `status` are the gRPC status (number and name) a gRPC client would have
seen, `message` says what to change, `details` is always a list (google.rpc.Status'
shape, as grpc-gateway sends it).  Servicer errors map through `HTTP_STATUS`; errors
aiohttp raises before a servicer runs (no such route, wrong verb, body too large) and
unexpected exceptions are turned into the same shape by `json_errors`, so a client
never has to parse aiohttp's plain-text pages and a bug answers 500, never a dropped
connection.  The one exception is a request that is not HTTP at all (a header with a
control character, Content-Length next to Transfer-Encoding): aiohttp answers it with its
own text/plain 400 and closes the connection before any middleware runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

logger = logging.getLogger(__name__)
_AIOHTTP_SERVER_LOG = logging.getLogger("aiohttp.server")

# The largest request body the gateway reads; larger ones get 413.
MAX_BODY_BYTES = 2 << 20

# grpc-gateway's mapping, except FAILED_PRECONDITION -> 412 (a precondition failed).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    code: grpc.StatusCode, message: str, details: Iterable[object] = (), *, http_status: int | None = None
) -> web.Response:
    """The JSON error body; the HTTP status follows `code` unless `http_status` says otherwise."""
    return web.json_response(
        {"code": code.value[0], "status": code.name, "message": message, "details": list(details)},
        status=http_status or HTTP_STATUS.get(code, 500),
    )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body larger than {MAX_BODY_BYTES} bytes, the gateway's limit: send less per request "
            "(publish_batch in several calls, say)",
            http_status=413,
        )
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED, f"{request.method} {request.path}: use {allowed}", http_status=405
        )
    if isinstance(exc, web.HTTPNotFound):
        return error_response(grpc.StatusCode.NOT_FOUND, f"no route {request.method} {request.path}", http_status=404)
    return error_response(grpc.StatusCode.UNKNOWN, exc.reason, http_status=exc.status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's error pages and unexpected exceptions, as the gateway's JSON error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except web.RequestPayloadError as exc:
        # A body aiohttp could not read: an unknown or corrupt Content-Encoding, say.
        cause = exc.__cause__
        reason = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
        return error_response(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable request body: {reason.strip()}")
    except ConnectionResetError:
        # The client went away before its body arrived: no bug, and nobody to answer.
        logger.debug("HTTP %s %s: the client closed the connection", request.method, request.path)
        return error_response(grpc.StatusCode.CANCELLED, "the client closed the connection")
    except Exception:
        logger.exception("HTTP %s %s failed", request.method, request.path)
        return error_response(grpc.StatusCode.INTERNAL, "the node failed to handle the request; see its log")


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse (a control character in a header,
    Content-Length next to Transfer-Encoding) at ERROR with a traceback, before any
    middleware runs, so any client could fill a node's log with them.  It has already
    answered 400; here the record becomes one DEBUG line, as aiohttp logs a bad request
    line, and is dropped unless DEBUG is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = exc.message.strip().splitlines()[0] if exc.message.strip() else type(exc).__name__
        record.msg, record.args = "malformed HTTP request from %s answered 400: %s", (remote, reason)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info = record.exc_text = None
        return _AIOHTTP_SERVER_LOG.isEnabledFor(logging.DEBUG)


_QUIET = _MalformedRequests()


def quiet_malformed_requests() -> None:
    """Installs the filter above once per process; every gateway app calls it."""
    _AIOHTTP_SERVER_LOG.addFilter(_QUIET)  # adding the same filter twice keeps one
