"""The node's HTTP app: every annotated RPC, /health and /raft/state, behind the JSON
error middleware and request metrics.  The node and the gateway tests both build it
here, so the tests exercise exactly what a node serves."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from server.api.interceptors import RequestStats
from server.gateway.errors import json_errors, quiet_malformed_requests
from server.gateway.request_metrics import timed
from server.gateway.status import NodeStatus, add_status_routes
from server.gateway.transcoder import Route, gateway_app


def http_app(routes: Iterable[Route], status: NodeStatus, requests: RequestStats) -> web.Application:
    quiet_malformed_requests()
    app = gateway_app(routes, middlewares=[timed(requests), json_errors])
    add_status_routes(app, status)
    return app
