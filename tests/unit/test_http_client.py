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


async def _closing(request: web.Request) -> web.Response:
    response = web.json_response({"last": True})
    response.force_close()
    return response


async def _look_alike(request: web.Request) -> web.Response:
    return web.Response(body=b'{"a": 1}', headers={"X-Orig-Content-Length": "3"}, content_type="application/json")


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
    app.router.add_post("/closing", _closing)
    app.router.add_post("/look-alike", _look_alike)
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield test_server


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[HttpConnection]:
    connection = HttpConnection.to(str(server.make_url("")))
    yield connection
    connection.close()


async def test_reads_each_answer_whole_on_one_kept_connection(http: HttpConnection) -> None:
    answers = [await http.post("/echo", b'{"n": %d}' % n) for n in range(3)]
    assert [status for status, _ in answers] == [200, 200, 200]
    bodies = [body for _, body in answers]
    assert [b'"got": {"n": %d}' % n in body for n, body in enumerate(bodies)] == [True] * 3
    ports = {body.rsplit(b'"peer": ', 1)[1] for body in bodies}
    assert len(ports) == 1, "a new connection per request"


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/missing", (404, b'{"code": 5}')),  # an error status comes back with its body
        ("/look-alike", (200, b'{"a": 1}')),  # X-Orig-Content-Length is not Content-Length
        ("/closing", (200, b'{"last": true}')),  # Connection: close: the next call reconnects
    ],
)
async def test_an_answer_is_read_whole_and_the_next_call_goes_through(
    http: HttpConnection, path: str, answer: tuple[int, bytes]
) -> None:
    assert await http.post(path, b"{}") == answer
    assert (await http.post("/echo", b"{}"))[0] == 200


@pytest.mark.parametrize("path", ["/chunked", "/hang-up"])
async def test_an_answer_it_cannot_read_raises_and_the_next_call_reconnects(http: HttpConnection, path: str) -> None:
    with pytest.raises(HttpError, match=f"POST {path}"):
        await http.post(path, b"{}")
    assert (await http.post("/echo", b"{}"))[0] == 200


async def test_a_port_nobody_listens_on_raises() -> None:
    (port,) = free_ports(1)
    with pytest.raises(HttpError, match="ConnectionRefusedError"):
        await HttpConnection("127.0.0.1", port).post("/echo", b"{}")
