"""Smoke run of benchmarks/fit_fusion.py: it runs to the end on the current tree and writes every
row it promises. Its figures are not checked (``--quick`` uses 40 questions), only what must
hold whatever they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fit_fusion.py"
LOCOMO = ROOT.parent / "shared" / "data" / "locomo" / "locomo-dev.json"
ROWS = {"lexical", "vector", "hybrid rrf", "auto", *(f"weighted {i / 10:.1f}" for i in range(11))}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in benchmarks/
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.skipif(not LOCOMO.exists(), reason="the shared LoCoMo data is not here")
def test_fit_fusion_quick(tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    r = _run("--quick", "--out", out, "--tmpdir", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "quick" and res["fit_conversations"] == ["conv-26"]
    assert res["held_conversations"] == ["conv-42"]
    by = {e["embedder"]: e for e in res["embedders"]}
    assert set(by) == {"hash", "minilm"}
    h = by["hash"]
    assert set(h["rows"]) == ROWS
    for row in h["rows"].values():
        for split in ("fit", "held", "all"):
            assert row[split]["questions"] == {"fit": 40, "held": 40, "all": 80}[split]
            assert 0.0 <= row[split]["recall@10"] <= 1.0
    assert h["fitted_lexical_weight"] in [i / 10 for i in range(11)]
    assert h["table_lexical_weight"] == 1.0 and h["auto"]["mode"] == "lexical"
    # a lexical weight of 1 is the lexical ranking itself, and auto for hash is lexical
    for split in ("fit", "held"):
        assert h["rows"]["weighted 1.0"][split]["recall@10"] == h["rows"]["lexical"][split]["recall@10"]
        assert h["rows"]["auto"][split]["recall@10"] == h["rows"]["lexical"][split]["recall@10"]
    fit = {w: h["rows"][f"weighted {w:.1f}"]["fit"]["recall@10"] for w in [i / 10 for i in range(11)]}
    assert fit[h["fitted_lexical_weight"]] == max(fit.values())
    if "skipped" in by["minilm"]:
        assert "minilm" in r.stdout and "skipped" in r.stdout
    text = " ".join(r.stdout.split())  # titles wrap in a narrow table
    assert "held-out" in text and "weighted hybrid by w" in text and "by category" in text
    assert not list(tmp_path.glob("capsule-bench-fit-fusion-*")), "the scratch folder must go"


def test_fit_fusion_rejects_an_unknown_embedder(tmp_path: Path) -> None:
    r = _run("--embedders", "hash,bogus", "--out", tmp_path / "x.json")
    assert r.returncode == 2 and "bogus" in r.stderr
