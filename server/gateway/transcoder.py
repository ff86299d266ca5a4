"""HTTP/JSON for every annotated RPC, with no per-endpoint code.

Routes come from the `google.api.http` annotations in the service descriptors — the
ones grpc-gateway and Envoy's transcoder read — and bodies are transcoded with
protobuf's own JSON mapping.  A route calls the very servicer object the gRPC server
uses, in-process (a loopback gRPC hop would cost more than the whole HTTP request), so
HTTP and gRPC cannot drift.

For curl users, enum values may be written by their short lowercase name (`"shared"` for
`LOCK_MODE_SHARED`, `"local"` for `CONSISTENCY_LOCAL`), and numbers are accepted for
durations in seconds, as the deployment guide writes them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.message_factory import GetMessageClass

from server.gateway.errors import MAX_BODY_BYTES, error_response

# A deadline, as gRPC clients send it (and grpc-gateway accepts it): `Grpc-Timeout: 2S`.
TIMEOUT_HEADER = "Grpc-Timeout"
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Aborted(Exception):
    """Raised by `InProcessContext.abort`, as grpc.aio raises to end a real call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class InProcessContext:
    """The part of grpc.aio.ServicerContext that servicers use, for in-process calls.

    `deadline` is in the event loop's clock, None for none: servicers that wait (a long
    poll) read it through `time_remaining` to answer in time, as over gRPC.
    """

    def __init__(self, deadline: float | None = None) -> None:
        self._deadline = deadline

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> None:
        raise Aborted(code, details)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())


Method = Callable[[ProtoMessage, Any], Awaitable[ProtoMessage]]


@dataclass(frozen=True)
class Route:
    verb: str
    path: str
    body: str  # "*", a field name, or "" (GET: fields from the query string)
    request: Descriptor
    method: Method
    rpc: str  # full name, for metrics and errors


def routes_for(service: ServiceDescriptor, servicer: object) -> list[Route]:
    """Every annotated method of `service`, bound to `servicer`'s implementation."""
    found = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is None or verb == "custom":
            continue
        found.append(
            Route(
                verb.upper(),
                getattr(rule, verb),
                rule.body,
                method.input_type,
                getattr(servicer, method.name),
                f"/{service.full_name}/{method.name}",
            )
        )
    return found


def _short_enum_names(descriptor: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Rewrite `"shared"` to `"LOCK_MODE_SHARED"` (and the like) wherever an enum is expected."""
    out: dict[str, Any] = {}
    for name, value in payload.items():
        field = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)
        if field is not None and field.enum_type is not None and isinstance(value, str):
            value = _enum_name(field.enum_type, value)
        elif field is not None and field.message_type is not None and isinstance(value, dict):
            if field.message_type.full_name.startswith("dsync."):
                value = _short_enum_names(field.message_type, value)
        out[name] = value
    return out


def _enum_name(enum: Any, value: str) -> str:
    if value in enum.values_by_name:
        return value
    prefix = "".join(("_" + c if c.isupper() else c.upper()) for c in enum.name).lstrip("_")
    candidate = f"{prefix}_{value.upper()}"
    return candidate if candidate in enum.values_by_name else value


def timeout_seconds(header: str) -> float:
    """`Grpc-Timeout`'s value (digits and a unit: H, M, S, m, u, n) in seconds; ValueError if malformed."""
    match = _TIMEOUT.fullmatch(header.strip())
    if match is None:
        raise ValueError(
            f"{TIMEOUT_HEADER}: {header!r} is not a timeout; write up to 8 digits and a unit, "
            "H, M, S, m (ms), u or n: '2S', '500m'"
        )
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


async def _parse(route: Route, path_fields: list[str], http: web.Request, message: ProtoMessage) -> None:
    """Fill `message` from the path, then the body (or the query string of a GET)."""
    payload: dict[str, Any] = {}
    if route.body:
        raw = await http.read()  # HTTPRequestEntityTooLarge beyond MAX_BODY_BYTES: see errors.py
        if raw.strip():
            decoded = json.loads(raw)
            if route.body == "*":
                if not isinstance(decoded, dict):
                    raise ValueError("the body must be a JSON object")
                payload = decoded
            else:
                payload = {route.body: decoded}
    else:
        payload = dict(http.query)
    for name in path_fields:
        payload[name] = http.match_info[name]
    json_format.ParseDict(_short_enum_names(route.request, payload), message)


def _handler(route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    request_class = GetMessageClass(route.request)
    path_fields = [f.name for f in route.request.fields if "{" + f.name + "}" in route.path]

    async def handle(http: web.Request) -> web.Response:
        message = request_class()
        try:
            header = http.headers.get(TIMEOUT_HEADER)
            timeout = None if header is None else timeout_seconds(header)
            await _parse(route, path_fields, http, message)
        except (ValueError, json_format.ParseError) as exc:
            return error_response(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        context = InProcessContext(deadline)
        try:
            async with asyncio.timeout_at(deadline) as scope:
                reply = await route.method(message, context)
        except Aborted as exc:
            return error_response(exc.code, exc.details)
        except TimeoutError:
            if not scope.expired():
                raise
            return error_response(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer within the {TIMEOUT_HEADER} of {header}; a write may still take effect: "
                "retry with the same header.client_id and header.sequence",
            )
        return web.json_response(
            json_format.MessageToDict(
                reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    return handle


def _path_for_aiohttp(path: str) -> str:
    # google.api.http templates "{field}" are aiohttp's own syntax for simple variables.
    if "=" in path or "**" in path:
        raise ValueError(f"unsupported route template {path!r}: only simple {{field}} variables")
    return path


def gateway_app(routes: Iterable[Route], *, middlewares: Iterable[Any] = ()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=list(middlewares))
    for route in routes:
        app.router.add_route(route.verb, _path_for_aiohttp(route.path), _handler(route))
    return app
