"""Children started while this process's gRPC is busy reach their exec (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import grpc.aio

from server.children import die_with_parent

SPAWNS = 150  # with gRPC's fork support on, 1 to 6 in 60 died before exec (SIGSEGV or SIGABRT)


def _echo(request: bytes, context: object) -> bytes:
    return request


async def test_children_forked_while_grpc_is_busy_all_start() -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_echo, lambda b: b, lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Call": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/echo.Echo/Call", lambda b: b, lambda b: b)

    async def keep_busy() -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):  # a slow answer is not the point here
                await call(b"x", timeout=5)

    load = [asyncio.create_task(keep_busy()) for _ in range(8)]
    try:
        codes = []
        for _ in range(SPAWNS):
            child = await asyncio.create_subprocess_exec(
                "/bin/true",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
            )
            codes.append(await child.wait())
        assert codes == [0] * SPAWNS, f"children killed by signal: {[-c for c in codes if c]}"
    finally:
        for task in load:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*load)
        await channel.close()
        await server.stop(None)
