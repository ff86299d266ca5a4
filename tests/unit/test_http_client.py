"""The gateway benchmark's HTTP client against a real aiohttp server: it must read exactly
what the server answers, keep its connection, and fail loudly on what it cannot read, or
the benchmark's figures would count broken exchanges as served requests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.http_client import HttpConnection, HttpError
from server.cluster import free_ports

pytestmark = pytest.mark.asyncio


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await request.json(), "peer": request.transport.get_extra_info("peername")[1]})


async def _missing(request: web.Request) -> web.Response:
    return web.json_response({"code": 5}, status=404)


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"{}")
    await response.write_eof()
    return response


async def _hang_up(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/echo", _echo)
    app.router.add_post("/missing", _missing)
    app.router.add_post("/chunked", _chunked)
    app.router.add_post("/hang-up", _hang_up)
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield test_server


async def test_reads_each_answer_whole_on_one_kept_connection(server: TestServer) -> None:
    http = HttpConnection.to(str(server.make_url("")))
    try:
        answers = [await http.post("/echo", b'{"n": %d}' % n) for n in range(3)]
    finally:
        http.close()
    assert [status for status, _ in answers] == [200, 200, 200]
    bodies = [body for _, body in answers]
    assert [b'"got": {"n": %d}' % n in body for n, body in enumerate(bodies)] == [True] * 3
    ports = {body.rsplit(b'"peer": ', 1)[1] for body in bodies}
    assert len(ports) == 1, "a new connection per request"


async def test_an_error_status_is_returned_with_its_body(server: TestServer) -> None:
    http = HttpConnection("127.0.0.1", server.port or 0)
    try:
        assert await http.post("/missing", b"{}") == (404, b'{"code": 5}')
        assert (await http.post("/echo", b"{}"))[0] == 200
    finally:
        http.close()


@pytest.mark.parametrize("path", ["/chunked", "/hang-up"])
async def test_an_answer_it_cannot_read_raises_and_the_next_call_reconnects(server: TestServer, path: str) -> None:
    http = HttpConnection("127.0.0.1", server.port or 0)
    try:
        with pytest.raises(HttpError, match=f"POST {path}"):
            await http.post(path, b"{}")
        assert (await http.post("/echo", b"{}"))[0] == 200
    finally:
        http.close()


async def test_a_port_nobody_listens_on_raises() -> None:
    (port,) = free_ports(1)
    with pytest.raises(HttpError, match="ConnectionRefusedError"):
        await HttpConnection("127.0.0.1", port).post("/echo", b"{}")
