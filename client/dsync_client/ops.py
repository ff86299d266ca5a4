"""One RPC as data: which method, the request, and how to turn the answer into Python.

The sync and asyncio transports run the same operations, so requests are built and
answers converted once, here and in the *_ops modules, and each flavour only adds I/O.
A write is built without its request header: the transport stamps one (`Op.stamped`)
from a session it holds for the call's whole life.
Methods are called by path through the channel (`channel.unary_unary`), which both
flavours share; the path and response type are checked against the generated
descriptors when the module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from dsync.v1 import common_pb2

from .errors import DsyncError

Resp = TypeVar("Resp", bound=Message)
Out = TypeVar("Out")


@dataclass(frozen=True)
class Method(Generic[Resp]):
    path: str
    response: type[Resp]


def method(file: FileDescriptor, service: str, name: str, response: type[Resp]) -> Method[Resp]:
    """The method `service.name` of a generated file, checked to answer with `response`."""
    descriptor = file.services_by_name[service].methods_by_name[name]
    if descriptor.output_type is not response.DESCRIPTOR:
        raise TypeError(f"{service}.{name} answers {descriptor.output_type.full_name}, not {response.__name__}")
    return Method(f"/{descriptor.containing_service.full_name}/{name}", response)


@dataclass(frozen=True)
class Op(Generic[Resp, Out]):
    """One call.  `wait` is how long the server may legitimately hold it (a lock wait, a
    long poll); `refine` a more precise error class for this operation's refusals (a
    FAILED_PRECONDITION from Release is NotHeld)."""

    method: Method[Resp]
    request: Message
    convert: Callable[[Resp], Out]
    wait: float = 0.0
    refine: type[DsyncError] | None = None

    @property
    def write(self) -> bool:
        """Writes are the calls that carry a request header (and so take effect once)."""
        return "header" in self.request.DESCRIPTOR.fields_by_name

    def stamped(self, header: common_pb2.RequestHeader) -> Op[Resp, Out]:
        """This write with `header`, which every attempt then carries.  The transport
        stamps it, as the header belongs to the call's session, not to the operation."""
        request = type(self.request)()
        request.CopyFrom(self.request)
        getattr(request, "header").CopyFrom(header)  # every write request names it `header`
        return replace(self, request=request)


ConsistencyName = Literal["linearizable", "local"]
_CONSISTENCY = {
    "linearizable": common_pb2.CONSISTENCY_LINEARIZABLE,
    "local": common_pb2.CONSISTENCY_LOCAL,
}


def consistency(name: ConsistencyName) -> common_pb2.Consistency.ValueType:
    """"linearizable" (default: reflects every acknowledged write) or "local" (the answering
    node's replica, no round trip, may lag)."""
    try:
        return _CONSISTENCY[name]
    except KeyError:
        raise ValueError(f"consistency must be 'linearizable' or 'local', not {name!r}") from None
