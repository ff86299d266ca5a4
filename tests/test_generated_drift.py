"""The committed dsync/ package must be exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HINT = "generated code is out of date with protos/: run `make gen`"


def _tree(top: Path) -> dict[str, bytes]:
    return {
        p.relative_to(top).as_posix(): p.read_bytes()
        for p in top.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    # Everything generated belongs in the one package; a proto outside protos/dsync/ would add another.
    assert [p.name for p in tmp_path.iterdir()] == ["dsync"]
    fresh, committed = _tree(tmp_path / "dsync"), _tree(ROOT / "dsync")
    assert sorted(fresh.keys() - committed.keys()) == [], f"missing files; {HINT}"
    assert sorted(committed.keys() - fresh.keys()) == [], f"extra files; {HINT}"
    assert sorted(name for name in fresh if fresh[name] != committed[name]) == [], f"files differ; {HINT}"
