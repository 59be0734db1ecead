"""`capsule tasks` on a long-lived queue: --status, --limit, and a table that stays short.

An agent that runs for weeks finishes thousands of tasks, and they all stay in the queue (7.9):
the table listed every one (32,000 rows took 23 s to draw), so the open ones were lost among them.
The table now shows at most 100 rows and says how many it left out; --status picks statuses (or
`open`), --limit caps both the table and --json, and the counts stay the whole queue's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

import capsule

from .clirun import capsule_cli


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return capsule_cli(*args, ok=False, timeout=120)


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """151 tasks: 130 done, 1 claimed, 1 failed, 1 cancelled, 18 pending (one blocked by the cancelled one)."""
    path = tmp_path_factory.mktemp("tasks") / "q.capsule"
    t = [1_000_000_000_000]

    def clock() -> int:
        t[0] += 1_000
        return t[0]

    with capsule.create(path, clock=clock) as cap:
        ids = cap.tasks.add_many([{"task": f"t{i:03d}", "max_attempts": 1} for i in range(150)])
        for tid in ids[:130]:
            cap.tasks.claim(tid, "w")
            cap.tasks.complete(tid, "w", result=tid)
        cap.tasks.claim("t130", "w", lease=10**18)
        cap.tasks.claim("t131", "w")
        cap.tasks.fail("t131", "w", "boom")
        cap.tasks.cancel("t132")
        cap.tasks.add("z-after", deps=["t132"])  # cancelled: it can never run
    return path


def test_table_shows_at_most_100_rows_and_says_how_many_it_left_out(queue: Path) -> None:
    p = run("tasks", queue, "--now", "last")
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == 100
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("151 tasks (18 pending, 1 claimed, 130 done, 1 failed, 1 cancelled); 17 due now"), last
    assert "51 more not shown" in last


def test_status_open_lists_pending_and_claimed_with_whole_queue_counts(queue: Path) -> None:
    p = run("tasks", queue, "--status", "open", "--json", "--now", "last")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {t["status"] for t in doc["tasks"]} == {"pending", "claimed"}
    assert len(doc["tasks"]) == 19 and "more" not in doc
    assert doc["counts"] == {"pending": 18, "claimed": 1, "done": 130, "failed": 1, "cancelled": 1}
    assert "z-after" not in doc["due"] and len(doc["due"]) == 17
    blocked = {t["id"]: t["blocked_by"] for t in doc["tasks"]}
    assert blocked["z-after"] == ["t132"] and "blocked" in run("tasks", queue, "--status", "pending").stdout


def test_status_repeats_and_takes_commas(queue: Path) -> None:
    a = json.loads(run("tasks", queue, "--status", "failed,cancelled", "--json").stdout)
    b = json.loads(run("tasks", queue, "--status", "failed", "--status", "CANCELLED", "--json").stdout)
    assert [t["id"] for t in a["tasks"]] == [t["id"] for t in b["tasks"]] == ["t131", "t132"]
    p = run("tasks", queue, "--status", "done", "--status", "failed")
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == 100 and "31 more not shown" in p.stdout


def test_limit_caps_json_and_says_how_many_more(queue: Path) -> None:
    doc = json.loads(run("tasks", queue, "--json", "--limit", "3").stdout)
    assert [t["id"] for t in doc["tasks"]] == ["t000", "t001", "t002"] and doc["more"] == 148
    full = json.loads(run("tasks", queue, "--json").stdout)
    assert len(full["tasks"]) == 151 and "more" not in full


def test_nothing_matching_prints_the_summary_only(tmp_path: Path, queue: Path) -> None:
    with capsule.create(tmp_path / "e.capsule"):
        pass
    p = run("tasks", tmp_path / "e.capsule")
    assert p.returncode == 0 and p.stdout.strip() == "0 tasks (none); 0 due now", p.stdout


@pytest.mark.parametrize("args", [("--status", "bogus"), ("--status", "done,"), ("--limit", "0")])
def test_bad_filters_are_one_line_usage_errors(queue: Path, args: tuple[str, ...]) -> None:
    before = hashlib.sha256(queue.read_bytes()).hexdigest()
    p = run("tasks", queue, *args)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("capsule: error: "), p.stderr
    assert hashlib.sha256(queue.read_bytes()).hexdigest() == before
