"""Smoke runs of the benchmark programs: they run to the end on the current tree
and write every row they promise. Figures are not checked (benchmarks never gate
on a wall-clock number); a row whose command failed is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCALE = ROOT / "benchmarks" / "scale.py"

# Every row of benchmarks/scale.py, per size and for the start-up table.
SCALE_ROWS = {
    "ingest_rps", "ingest_s", "vindex_s", "lexindex_s", "build_total_s", "open_lib", "open_cli", "get_p50",
    "vector_p50", "vector_recall", "lex_first", "lex_cli", "lex_p50", "state_cli", "checkpoint_first",
    "checkpoint_next", "verify_quick_cli", "verify_deep_cli", "verify_quick_lib", "verify_deep_lib", "file_bytes",
    "raw_ratio",
}
SCALE_GLOBAL_ROWS = {"version_cli", "import_capsule"}
NO_CAPSULE_VALUE = {"lexindex_s"}  # capsule has no separate lexical index step to time


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in benchmarks/
    return subprocess.run([sys.executable, str(SCALE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_scale_quick_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    r = _run(["--quick", "--sizes", "1000", "--json", str(out), "--tmpdir", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "quick" and [s["n"] for s in res["sizes"]] == [1000]
    assert set(res["global"]) == SCALE_GLOBAL_ROWS
    rows = res["sizes"][0]["rows"]
    assert set(rows) == SCALE_ROWS
    failed = {f"{key} ({side}): {row[side]['error']}" for key, row in {**rows, **res["global"]}.items()
              for side in ("capsule", "peer") if row[side].get("error")}
    assert not failed, sorted(failed)
    for key, row in {**rows, **res["global"]}.items():
        for side in ("capsule", "peer"):
            v = row[side]["value"]
            if side == "capsule" and key in NO_CAPSULE_VALUE:
                assert v is None
            else:
                assert isinstance(v, int | float) and v >= 0, (key, side, row[side])
    assert rows["vector_recall"]["capsule"]["value"] > 0.5  # the ids map back to the vectors they hold
    assert res["sizes"][0]["build"]["raw_jsonl_bytes"] > 1000 * 200  # ~200 bytes of text per record
    assert "capsule at scale" in r.stdout and "start-up" in r.stdout
    assert not list(tmp_path.glob("capsule-bench-scale-*")), "the scratch folder must go"


def test_scale_rejects_a_bad_size(tmp_path: Path) -> None:
    r = _run(["--sizes", "10k,12q"], tmp_path)
    assert r.returncode == 2
    assert "bad size '12q'" in r.stderr and "Traceback" not in r.stderr


def test_sessions_quick_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "sessions.json"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sessions.py"), "--quick", "--out", str(out),
                        "--tmpdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"capsule", "fixed", "sqlite"} and res["records"] == 1000
    for side in ("capsule", "fixed"):
        row = res["rows"][side]
        assert row["by_frame"]["records"] > 0 and sum(row["by_frame"].values()) == row["bytes"] - 64
        assert 0 < row["compacted_bytes"] <= row["bytes"] and row["first_query_ms"] > 0
    assert res["rows"]["sqlite"]["bytes"] > 0
    assert not list(tmp_path.glob("capsule-bench-sessions-*")), "the scratch folder must go"
