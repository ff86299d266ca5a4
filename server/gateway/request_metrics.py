"""Requests served over gRPC and HTTP: counts by outcome and latency histograms.

gRPC calls are recorded by server.api.interceptors.StatsInterceptor, HTTP requests by
`timed` below, each into its own RequestStats; HTTP routes call the servicers
in-process, so a request is counted once, under the protocol it arrived by.  HTTP
requests are labelled with their route template, and a path no route matches with
"unmatched", so a scan of random URLs cannot mint series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.api.interceptors import RequestStats
from server.gateway.errors import Handler
from server.gateway.families import histogram_family

UNMATCHED = "unmatched"


def timed(stats: RequestStats) -> Middleware:
    """Middleware recording each request's route, status and duration into `stats`.

    Put it first (outermost), so it sees the status of the JSON error bodies too.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED
            stats.observe(route, str(status), time.perf_counter() - began)

    return middleware


class RequestCollector(Collector):
    def __init__(self, grpc_requests: RequestStats, http_requests: RequestStats) -> None:
        self._grpc = grpc_requests
        self._http = http_requests

    def collect(self) -> Iterator[Metric]:
        handled = CounterMetricFamily(
            "dsync_grpc_server_handled_total",
            "Unary gRPC calls completed, by method and status code.",
            labels=["service", "method", "code"],
        )
        for (full_method, code), count in sorted(self._grpc.counts.items()):
            handled.add_metric([*_split(full_method), code], count)
        yield handled
        yield histogram_family(
            "dsync_grpc_server_handling_seconds",
            "Time to complete a unary gRPC call, by method.",
            ["service", "method"],
            [(_split(full_method), histogram) for full_method, histogram in sorted(self._grpc.latency.items())],
        )
        requests = CounterMetricFamily(
            "dsync_http_requests_total", "HTTP requests answered, by route and status.", labels=["route", "status"]
        )
        for (route, status), count in sorted(self._http.counts.items()):
            requests.add_metric([route, status], count)
        yield requests
        yield histogram_family(
            "dsync_http_request_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            [([route], histogram) for route, histogram in sorted(self._http.latency.items())],
        )


def _split(full_method: str) -> tuple[str, str]:
    """`/dsync.v1.LockService/Acquire` -> (`dsync.v1.LockService`, `Acquire`)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method
