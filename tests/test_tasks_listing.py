"""``tasks.to_dict(statuses=, limit=)``: the listing ``capsule tasks`` shows, without a map per task.

``capsule tasks --limit 3`` on 100k tasks turned every task into a map to show three. The
queue now lists only the tasks asked for; the document must be the whole one, filtered and
cut, with ``more`` saying how many were left out and the counts still the whole queue's.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import capsule

from .clirun import capsule_cli

T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("q") / "q.capsule"
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap:
        cap.tasks.add_many([{"task": f"t{i:02d}", "deps": [f"t{i - 1:02d}"] if i % 4 == 3 else []} for i in range(40)])
        for i in range(0, 40, 4):
            cap.tasks.claim(f"t{i:02d}", "w", lease=10**12)
            if i % 8:
                cap.tasks.complete(f"t{i:02d}", "w")
        cap.tasks.cancel("t01")
    return p


@pytest.mark.parametrize("statuses", [None, ["done"], ["pending", "claimed"], ["cancelled"], ["failed"]])
@pytest.mark.parametrize("limit", [None, 1, 3, 100])
def test_the_listing_is_the_whole_document_filtered_and_cut(queue: Path, statuses: list[str] | None,
                                                            limit: int | None) -> None:
    with capsule.open(queue) as cap:
        full = cap.tasks.to_dict(now=T0 + 10**12)
        got = cap.tasks.to_dict(now=T0 + 10**12, statuses=statuses, limit=limit)
    chosen = [t for t in full["tasks"] if statuses is None or t["status"] in statuses]
    want = {**full, "tasks": chosen[:limit]}
    if limit is not None and len(chosen) > limit:
        want["more"] = len(chosen) - limit
    assert got == want
    assert list(got) == list(want)  # the keys in the same order: the JSON is the same bytes


def test_the_cli_counts_the_whole_queue_and_says_what_it_left_out(queue: Path) -> None:
    r = capsule_cli("tasks", str(queue), "--status", "open", "--limit", "2", "--now", "2023-11-14T22:30:00Z")
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("40 tasks (") and "more not shown" in last, last
    with capsule.open(queue) as cap:
        counts = cap.tasks.to_dict()["counts"]
    assert f"; {counts['pending'] + counts['claimed'] - 2} more not shown" in last, last
