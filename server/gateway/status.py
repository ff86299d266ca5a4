"""`GET /health` and `GET /raft/state`: what an operator or orchestrator asks a node."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

# Returns (serving, reason) and the node's Raft state as JSON-ready data.
HealthProbe = Callable[[], tuple[bool, str]]
StateProbe = Callable[[], dict[str, object]]


def add_status_routes(app: web.Application, health: HealthProbe, state: StateProbe) -> None:
    async def get_health(request: web.Request) -> web.Response:
        serving, reason = health()
        return web.json_response(
            {"status": "ok" if serving else "unavailable", "reason": reason},
            status=200 if serving else 503,
        )

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state())

    app.router.add_get("/health", get_health)
    app.router.add_get("/raft/state", get_state)
