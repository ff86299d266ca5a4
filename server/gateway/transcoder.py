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
import base64
import binascii
import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor
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


def _normalise(descriptor: Descriptor, payload: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Check and ease what protobuf's JSON mapping would take too loosely, in the fields of
    dsync's own messages: a field given twice (`page_size` and `pageSize`), an enum given
    as a bool or a fraction (json_format would truncate 2.9 to 2), bytes that are not
    base64 (json_format decodes leniently, dropping what it cannot read).  Short enum names
    (`"shared"` for `LOCK_MODE_SHARED`) become full ones.  Unknown fields are left for
    json_format to name."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # field name -> the key that gave it
    for key, value in payload.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is not None:
            name = where + field.name
            if field.name in given:
                raise ValueError(f"{name}: given twice, as {given[field.name]!r} and {key!r}; give it once")
            given[field.name] = key
            if field.is_repeated and isinstance(value, list) and not _is_map(field):
                value = [_normalise_value(field, item, f"{name}[{i}]") for i, item in enumerate(value)]
            elif not field.is_repeated:
                value = _normalise_value(field, value, name)
        out[key] = value
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _normalise_value(field: FieldDescriptor, value: Any, name: str) -> Any:
    if field.enum_type is not None:
        if isinstance(value, str):
            return _enum_name(field.enum_type, value)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name}: {json.dumps(value)} is not a value; use one of {_short_names(field.enum_type)}")
    elif field.type == FieldDescriptor.TYPE_BYTES and isinstance(value, str):
        _check_base64(value, name)
    elif field.message_type is not None and isinstance(value, dict):
        if field.message_type.full_name.startswith("dsync."):
            return _normalise(field.message_type, value, name + ".")
    return value


@functools.cache
def _enum_prefix(enum: EnumDescriptor) -> str:
    return "".join(("_" + c if c.isupper() else c.upper()) for c in enum.name).lstrip("_") + "_"


def _enum_name(enum: EnumDescriptor, value: str) -> str:
    if value in enum.values_by_name:
        return value
    candidate = _enum_prefix(enum) + value.upper()
    return candidate if candidate in enum.values_by_name else value


def _short_names(enum: EnumDescriptor) -> str:
    prefix = _enum_prefix(enum)
    names = [v.name.removeprefix(prefix).lower() for v in enum.values if not v.name.endswith("_UNSPECIFIED")]
    return ", ".join(f'"{n}"' for n in names)


def _check_base64(value: str, name: str) -> None:
    # protobuf's JSON mapping takes the standard or the URL-safe alphabet, padded or not.
    text = value.replace("-", "+").replace("_", "/")
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"{name}: not base64 (standard or URL-safe alphabet, padding optional)") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} appears twice in one JSON object; give it once")
            seen.add(key)
    return obj


# One decoder for every body: json.loads builds a new one per call when given a hook.
_BODY_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _decode_body(raw: bytes) -> Any:
    try:
        # As json.loads reads bytes: UTF-8, or UTF-16/32 told by the first bytes.
        return _BODY_DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise ValueError("the body's JSON nests too deeply to parse: flatten it") from None


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
        if http.query:
            raise ValueError(
                f"{route.verb} {route.path} reads its fields from the JSON body, not the query string: "
                f"move {', '.join(sorted(http.query))} into the body"
            )
        raw = await http.read()  # HTTPRequestEntityTooLarge beyond MAX_BODY_BYTES: see errors.py
        if raw.strip():
            decoded = _decode_body(raw)
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
    json_format.ParseDict(_normalise(route.request, payload), message)


class _DeadlinePassed(Exception):
    """The request's own deadline passed before the servicer answered."""


async def _within(deadline: float | None, call: Awaitable[ProtoMessage]) -> ProtoMessage:
    """`call`'s answer; _DeadlinePassed if `deadline` (the loop's clock) passes first.
    Without a deadline no timer is set: the servicer bounds its own waits."""
    if deadline is None:
        return await call
    scope = asyncio.timeout_at(deadline)
    try:
        async with scope:
            return await call
    except TimeoutError:
        if scope.expired():
            raise _DeadlinePassed from None
        raise


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
            reply = await _within(deadline, route.method(message, context))
        except Aborted as exc:
            return error_response(exc.code, exc.details)
        except _DeadlinePassed:
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
