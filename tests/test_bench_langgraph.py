"""Smoke run of benchmarks/langgraph_bench.py (issue 13) at its quick size, so the script cannot rot: it
runs to the end on the current tree, fills every cell it promises and leaves no scratch files.
Figures are never checked against a wall-clock goal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langgraph.checkpoint.sqlite")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "langgraph_bench.py"
SAVER_KEYS = {"put_ms", "put_total_s", "get_latest_ms", "get_by_id_ms", "list_thread_ms", "list_limit10_ms",
              "list_before_ms", "per_thread", "reopen_get_ms", "bytes"}
STORE_KEYS = {"put_ms", "put_total_s", "get_ms", "search_query_ms", "search_query_ns_ms", "search_filter_ms",
              "list_namespaces_ms", "reopen_ms", "bytes"}


def test_langgraph_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "langgraph.json"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in benchmarks/
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--tmpdir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LangGraph on a capsule vs SqliteSaver" in r.stdout
    res = json.loads(out.read_text())
    assert res["mode"] == "quick" and res["config"]["checkpoints"] == 40
    sq = res["saver"]["sqlite"]
    assert set(sq) == SAVER_KEYS and sq["per_thread"] == 10
    if res["saver_error"] is None:  # CapsuleSaver is in this tree: its column is measured too
        assert set(res["saver"]["capsule"]) == SAVER_KEYS
        assert res["saver"]["capsule"]["put_ms"] > 0 and res["saver"]["capsule"]["bytes"] > 0
    else:
        assert "n/a" in r.stdout
    cs, ms = res["store"]["capsule"], res["store"]["memory"]
    assert set(cs) == STORE_KEYS and set(ms) == STORE_KEYS
    assert cs["bytes"] > 0 and ms["bytes"] is None and cs["reopen_ms"] > 0
    assert all(cs[k] > 0 and ms[k] > 0 for k in ("put_ms", "get_ms", "search_query_ms", "search_filter_ms"))
    # the same embedder on both sides: the capsule's index finds what InMemoryStore's scan finds
    assert res["store"]["top10_overlap"] >= 0.8
    assert len(res["table"]) == 17
    assert not list(tmp_path.glob("capsule-bench-langgraph-*")), "the scratch folder must go"
