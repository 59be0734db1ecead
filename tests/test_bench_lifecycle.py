"""Smoke run of benchmarks/lifecycle.py (issue 10) at a tiny size, so the script cannot rot:
it runs to the end on the current tree, writes every figure it promises and the
scenario it claims. Figures are never checked against a wall-clock goal; a step
whose command failed is a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import capsule

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "lifecycle.py"
POLICY_ROWS = {"compact_s", "compact_rps", "bytes", "frames", "open_cli", "table_bytes_per_record", "vs_fresh",
               "recall", "verify_parent_s"}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in benchmarks/
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_lifecycle_quick_runs_the_scenario(tmp_path: Path) -> None:
    out = tmp_path / "lifecycle.json"
    r = _run(["--quick", "--records", "1000", "--out", str(out), "--tmpdir", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    sc = res["scenario"]
    # 1000 memories over 10 commits, a tenth with vectors; the fates in their stated shares
    assert (sc["records"], sc["commits"], sc["vectors"]) == (1000, 10, 100)
    assert sc["fates"] == {"live": 290, "forgotten": 300, "expired": 200, "superseded": 200, "redacted": 10}
    assert "lifecycle scenario" in r.stdout
    assert not list(tmp_path.glob("capsule-bench-lifecycle-*")), "the scratch folder must go"
    if not hasattr(capsule.Transaction, "lifecycle"):  # not in this tree yet: the run says so and stops
        assert "no tx.lifecycle" in sc["lifecycle_error"]
        return
    assert "lifecycle_error" not in sc, sc.get("lifecycle_error")
    assert sc["lifecycle_events"] == {"forget": 1, "redact": 1, "supersede": 20}
    assert sc["replacements"] == 20
    m = res["measure"]
    if not hasattr(capsule, "compact"):  # not in this tree yet: an error in every policy's cell
        assert all(p["compact_s"]["error"] for p in m["policies"].values())
        return
    assert m["fresh"].get("error") is None, m["fresh"]
    assert m["fresh"]["records"] == 290 + 20  # the live memories and the revised ones
    assert set(m["policies"]) == {"history", "checkpoints", "live"}
    for policy, rows in m["policies"].items():
        assert set(rows) == POLICY_ROWS | {"policy"}, (policy, sorted(rows))
        failed = {k: v["error"] for k, v in rows.items() if isinstance(v, dict) and v.get("error")}
        assert not failed, (policy, failed)
        assert rows["compact_s"]["value"] > 0 and rows["compact_rps"]["value"] > 0
        assert 0 < rows["bytes"]["value"] <= rows["bytes"]["before"], policy  # compaction never grows the file
        assert rows["open_cli"]["records"] > 0
        # the same live search: the compacted file finds the uncompacted one's answers
        assert rows["recall"]["value"] > 0.5 and rows["recall"]["lexical"] > 0.5, (policy, rows["recall"])
    live = m["policies"]["live"]
    assert live["bytes"]["value"] < m["policies"]["history"]["bytes"]["value"]
    assert live["open_cli"]["records"] < m["before"]["open"]["records"]


def test_lifecycle_rejects_a_bad_size(tmp_path: Path) -> None:
    r = _run(["--records", "12q", "--out", str(tmp_path / "x.json")])
    assert r.returncode == 2
    assert "bad size '12q'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.json").exists()
