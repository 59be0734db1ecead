"""examples/agent.py, the agent a newcomer copies: run twice, and killed with SIGKILL midway.

The outbox it writes stands for the outside world: every effect must reach it exactly once,
however the agent is stopped and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import capsule

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "examples" / "agent.py"
EFFECTS = ["page:alert-1", "page:alert-2", "ticket:alert-3"]


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(AGENT), str(workdir), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _outbox(workdir: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (workdir / "outbox.jsonl").read_text().splitlines()]


def _check_finished(workdir: Path) -> None:
    """Every effect happened once, the journal says so, and the signatures check."""
    assert _outbox(workdir) == EFFECTS
    path = workdir / "agent.capsule"
    with capsule.open(path) as cap:
        assert [(a.key, a.status) for a in cap.actions()] == [(k, "done") for k in EFFECTS]
        assert [c.label for c in cap.checkpoints()] == ["alert-1", "alert-2", "alert-3"]
        st = cap.state()
        assert len(st.decisions) == 3
        for d in st.decisions:  # decided with evidence: the alert and the runbook rule it followed
            tags = [cap.get(e).tags for e in d["evidence"]]
            assert tags == [("alert",), ("runbook",)]
    report = capsule.verify(path, trust=capsule.load_public_key(workdir / "agent.key.pub"), strict=True)
    assert report.ok, report.first_error


def test_the_agent_runs_and_a_rerun_does_nothing_twice(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "alert-3: checkpoint signed" in first.stdout
    with capsule.open(tmp_path / "agent.capsule") as cap:
        before = (len(cap), cap.state_root, cap.commit_count)
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done in an earlier run") == 3
    with capsule.open(tmp_path / "agent.capsule") as cap:
        assert (len(cap), cap.state_root, cap.commit_count) == before  # the rerun wrote nothing
    _check_finished(tmp_path)


@pytest.mark.parametrize("kill_at", [
    "alert-1: decided",  # the decision is committed, the effect not yet asked for
    "alert-2: sent",  # the effect happened, its result is not committed: in doubt, reconciled
])
def test_the_agent_killed_midway_resumes_without_repeating_an_effect(tmp_path: Path, kill_at: str) -> None:
    proc = subprocess.Popen([sys.executable, str(AGENT), str(tmp_path), "--pause", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the agent pauses 1 s after each step: the kill lands inside that step
            if line.startswith(kill_at):
                break
        else:
            pytest.fail(f"the agent finished without printing {kill_at!r}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    done = _outbox(tmp_path) if (tmp_path / "outbox.jsonl").exists() else []
    assert done == (["page:alert-1", "page:alert-2"] if kill_at == "alert-2: sent" else [])
    with capsule.open(tmp_path / "agent.capsule") as cap:  # the crash left that effect in doubt
        assert [a.key for a in cap.actions(in_doubt=True)] == (["page:alert-2"] if done else [])
    rerun = _run(tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _check_finished(tmp_path)
