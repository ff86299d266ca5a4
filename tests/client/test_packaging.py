"""The client as users get it: type-checked with mypy --strict, built into a wheel that
carries the generated stubs (.py and .pyi) and installs and runs without this repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

USER_CODE = '''
from dsync.v1 import lock_pb2
from dsync_client import Client, Grant


def token_of(client: Client) -> int:
    grant: Grant = client.locks.acquire("r", "me")
    request = lock_pb2.AcquireRequest(resource="r", ttl=1.5)
    return grant.token + int(request.ttl)


def wrong(client: Client) -> str:
    return client.cache.put("k", {"v": 1})
'''


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_the_client_passes_mypy_strict() -> None:
    result = _run(sys.executable, "-m", "mypy", "--strict", "client", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_ships_the_stubs_and_works_installed_alone(tmp_path: Path) -> None:
    # The checkout's layout, minus everything else: client/ links into ../dsync.
    source = tmp_path / "checkout"
    junk = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(ROOT / "client", source / "client", symlinks=True, ignore=junk)
    shutil.copytree(ROOT / "dsync", source / "dsync", ignore=junk)
    pip = (sys.executable, "-m", "pip")
    dist = tmp_path / "dist"
    built = _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source / "client", cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("dsync_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    generated = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dsync" / "v1").glob("*.py*")}
    assert generated <= names and {"dsync/__init__.py", "dsync/py.typed", "dsync_client/py.typed"} <= names
    assert not {n for n in names if n.startswith(("dsync/fsm", "dsync/raft", "server", "client/"))}
    assert "dsync_client/cli.py" in names

    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    installed = _run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # grpcio, protobuf and googleapis-common-protos from this venv; dsync and dsync_client only from the wheel.
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path)
    site = Path(purelib.stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    locate = "import dsync_client, dsync.v1.lock_pb2 as l; print(dsync_client.__file__, l.__file__)"
    where = _run(python, "-c", locate, cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(site)) for path in where.stdout.split())
    help_text = _run(venv / "bin" / "dsync", "--help", cwd=tmp_path, env=env)
    assert help_text.returncode == 0 and "exit codes:" in help_text.stdout

    # Users' mypy finds the types of both packages (py.typed, .pyi) in site-packages.
    (tmp_path / "user.py").write_text(USER_CODE)
    mypy = (sys.executable, "-m", "mypy", "--strict", "--cache-dir", tmp_path / "mypy-cache")
    checked = _run(*mypy, "--python-executable", python, "user.py", cwd=tmp_path, env=env)
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    expected = 'user.py:13: error: Incompatible return value type (got "int", expected "str")  [return-value]'
    assert errors == [expected], checked.stdout + checked.stderr
