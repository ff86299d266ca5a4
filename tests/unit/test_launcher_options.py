"""The local cluster launcher refuses options it cannot honour before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def launch(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cluster", *options], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--grpc-port", "8000", "--http-port", "8001"],
            "--grpc-port 8000 and --http-port 8001: 3 nodes take ports 8000..8002 and 8001..8003, which overlap",
        ),
        (
            ["--nodes", "5", "--http-port", "9000", "--metrics-port", "9004"],
            "--http-port 9000 and --metrics-port 9004: 5 nodes take ports 9000..9004 and 9004..9008, which overlap",
        ),
        (["--grpc-port", "65534"], "--grpc-port 65534: 3 nodes need ports 65534..65536, within 1..65535"),
        (["--metrics-port", "0"], "--metrics-port 0: 3 nodes need ports 0..2, within 1..65535"),
    ],
)
def test_port_ranges_that_overlap_or_do_not_fit_are_refused(options: list[str], message: str, tmp_path: Path) -> None:
    result = launch(*options, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "data"
    file.write_text("")
    result = launch("--data-dir", str(file))
    assert result.returncode == 2
    assert f"--data-dir {file}: that is a file; name a directory" in result.stderr


def test_a_data_dir_that_cannot_be_made_is_reported_without_a_traceback(tmp_path: Path) -> None:
    file = tmp_path / "data"
    file.write_text("")
    result = launch("--data-dir", str(file / "below"), "--timeout", "5")
    assert result.returncode == 1
    assert "dsync cluster could not start: [Errno 20] Not a directory" in result.stderr
    assert "Traceback" not in result.stderr
