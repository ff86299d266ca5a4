"""`GET /metrics` on METRICS_PORT, in Prometheus' text format, from a registry of the node's own.

Each node gets its own CollectorRegistry rather than prometheus_client's global one:
the collectors read that node's objects, and tests run several nodes in one process.
The process, GC and platform collectors describe the whole process -- correct for a
node run by `python -m server`, the one way it is deployed.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.registry import Collector


def node_registry(collectors: list[Collector]) -> CollectorRegistry:
    """A registry with the node's collectors and the process-wide standard ones."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    return app
