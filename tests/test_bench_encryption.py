"""benchmarks/encryption.py stays runnable: a tiny run writes every row of its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_encryption_benchmark_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "enc.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encryption.py"), "--records", "1500",
                        "--quick", "--out", str(out), "--tmpdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["records"] == 1500
    sides = res["sides"]
    for side in ("plain", "encrypted"):
        assert sides[side]["verify_ok"] == 1.0
        assert sides[side]["append_rec_s"] > 0 and sides[side]["lexical_p50_ms"] > 0
    assert set(res["cost_ratios"]) >= {"append_rec_s", "small_commit_ms", "lexical_p50_ms", "vector_p50_ms"}
    assert abs(sides["encrypted"]["bytes"] / sides["plain"]["bytes"] - 1) < 0.05  # sealing adds ~28 B a frame
