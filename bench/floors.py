"""Floors measured in the same run as each benchmark: on a shared, noisy machine only a
ratio to a bare server measured alongside means anything.  Every benchmark runs its floor,
its load generator and (through `python -m server`) the nodes on uvloop, so the ratio
compares like with like."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

_ECHO = "/bench.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def grpc_echo_floor(clients: int = 64, seconds: float = 2.0, payload: int = 64) -> float:
    """Requests/s of a bare grpc.aio unary echo server with `clients` concurrent callers."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(_echo, _identity, _identity)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(_ECHO, _identity, _identity)
            body = b"x" * payload
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await call(body)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return done / (time.perf_counter() - started)
    finally:
        await server.stop(None)


async def aiohttp_echo_floor(clients: int = 50, seconds: float = 2.0, payload: int = 64) -> float:
    """Requests/s of a bare aiohttp server echoing a JSON POST body, `clients` concurrent
    keep-alive callers (the gateway benchmark's own client, `bench.http_client`) in this
    process: what the gateway's HTTP layer alone could do here, with no transcoding,
    servicer or Raft behind it."""
    from aiohttp import web

    from bench.http_client import HttpConnection

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    body = json.dumps({"key": "x" * payload}).encode()
    connections = [HttpConnection("127.0.0.1", port) for _ in range(clients)]
    try:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(http: HttpConnection) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                status, _ = await http.post("/echo", body)
                if status != 200:
                    raise RuntimeError(f"the echo floor answered {status}")
                done += 1

        started = time.perf_counter()
        async with asyncio.TaskGroup() as workers:  # one failing stops the others
            for http in connections:
                workers.create_task(worker(http))
        return done / (time.perf_counter() - started)
    finally:
        for http in connections:
            http.close()
        await runner.cleanup()
