"""Durable execution, reviewed from the README and the spec with a fresh context (findings M1, L2, L3)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.run.events import InvalidTaskEvent

S = 10**9


def _clock(start: int = 1_600_000_000 * S) -> Any:
    t = [start]

    def clock() -> int:
        return t[0]

    clock.t = t  # type: ignore[attr-defined]
    return clock


@pytest.mark.parametrize("bad", [float("nan"), {"tags": {"a", "b"}}, object(), "x" * (17 << 20)],
                         ids=["nan", "set", "object", "over-16-MiB"])
def test_a_result_the_format_cannot_hold_fails_the_attempt_and_the_loop_goes_on(tmp_path: Path, bad: Any) -> None:
    """M1: AgentLoop.run raised out of the loop and left the task claimed; every restart resumed it,
    ran the handler again and stopped there, so the tasks after it never ran."""
    p = tmp_path / "a.capsule"
    runs: list[str] = []

    def handler(step: capsule.Step) -> Any:
        runs.append(step.name)
        return bad if step.name == "bad" else step.name

    with capsule.create(p) as cap:
        cap.tasks.add("bad", name="bad", max_attempts=1)
        cap.tasks.add("after", name="ok")
        res = capsule.AgentLoop(cap, {"bad": handler, "ok": handler}).run()
        q = cap.tasks.queue()
        assert res.failed == ["bad"] and res.done == ["after"]
        assert q.tasks["bad"].status == "failed"
        assert q.tasks["bad"].error is not None and q.tasks["bad"].error.startswith("result not recordable: ")
        assert q.tasks["after"].status == "done"
    with capsule.open(p, "a") as cap:  # a restart runs nothing again
        res = capsule.AgentLoop(cap, {"bad": handler, "ok": handler}).run()
        assert res.resumed == [] and res.steps == 0
    assert runs == ["after", "bad"]  # due order: by id
    assert capsule.verify(p).ok


def test_deps_none_is_a_clear_error(tmp_path: Path) -> None:
    """L2: ``tuple(None)`` raised a bare TypeError, the one bad argument that was not a capsule error."""
    with capsule.create(tmp_path / "a.capsule") as cap:
        with pytest.raises(InvalidTaskEvent, match="deps must be a list of task ids, not NoneType"):
            cap.tasks.add("t", deps=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidTaskEvent, match="deps must be a list"):
            cap.tasks.add("t", deps=3)  # type: ignore[arg-type]
        assert cap.tasks.queue().tasks == {}


def test_a_view_judges_due_at_its_commit_time(tmp_path: Path) -> None:
    """L3: ``open(at=...).tasks.due()`` judged by the wall clock (years after a simulated 2020), while
    ``capsule tasks --at`` and a view's search judge at the commit's time (13.5)."""
    p = tmp_path / "a.capsule"
    clock = _clock()
    key = capsule.generate_key()
    with capsule.create(p, clock=clock) as cap:
        cap.tasks.add("soon", not_before=clock() + 60 * S)
        cap.tasks.add("held")
        cap.tasks.claim("held", "w", lease=30 * S)
        cap.checkpoint("c1", key=key)
        clock.t[0] += 3600 * S
        cap.tasks.add("later")
        with cap.view("c1") as v:
            assert v.tasks.due() == []
            assert v.tasks.to_dict()["now"] == v._snap.commit.time
            assert [t.id for t in v.tasks.due(now=clock())] == ["held", "soon"]  # an explicit time still rules
    with capsule.open(p, at="c1") as v:
        assert v.tasks.due() == []
    with capsule.open(p) as cap:  # the live capsule: the clock (the wall clock, years later)
        assert [t.id for t in cap.tasks.due()] == ["held", "later", "soon"]


def test_tasks_warns_when_the_queue_clock_is_ahead_and_actions_table_is_capped(tmp_path: Path) -> None:
    """L1: one event stamped a year ahead froze every lease and backoff, and `capsule tasks` said only
    '0 due now'; `capsule actions` drew 20k rows for 8 s where `tasks` shows 100."""
    from tests.clirun import capsule_cli

    p = tmp_path / "a.capsule"
    year = 365 * 86400 * S
    with capsule.create(p) as cap:
        cap.tasks.add("t")
        cap.tasks.claim("t", "dead-worker", lease=10 * S, now=capsule_now() + year)  # a clock a year ahead
        for i in range(130):
            cap.run_once(f"k{i:03d}", lambda i=i: i)
    r = capsule_cli("tasks", str(p))
    assert "the queue's clock is 36" in r.stderr and "days ahead of now" in r.stderr
    assert "0 due now" in r.stdout
    later = datetime.fromtimestamp(capsule_now() // S + 2 * year // S, tz=UTC).isoformat()
    r = capsule_cli("tasks", str(p), "--now", later)  # past the lease: no warning, the task is due
    assert "ahead" not in r.stderr and "1 due now" in r.stdout
    a = capsule_cli("actions", str(p))
    assert "k099" in a.stdout and "k100" not in a.stdout
    assert "130 actions (130 done); 30 more not shown" in a.stdout
    assert "k129" in capsule_cli("actions", str(p), "--limit", "1").stdout
    assert len(__import__("json").loads(capsule_cli("actions", str(p), "--json").stdout)) == 130


def capsule_now() -> int:
    import time

    return time.time_ns()


UNDECODABLE = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.fsdecode gives a Latin-1 name


class _BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class _BadKey:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __hash__(self) -> int:
        return 1


@pytest.mark.parametrize("case", ["surrogate-error", "broken-str", "surrogate-result-message", "repr-raises"])
def test_a_handler_error_the_format_cannot_hold_fails_the_attempt_too(tmp_path: Path, case: str) -> None:
    """The attack on M1's fix: the error path had the same hole. An exception naming an undecodable
    file name (a lone surrogate, as os.fsdecode gives), one whose __str__ raises, or a result whose
    own message cannot be stored raised out of run() and left the task claimed for ever."""
    p = tmp_path / "a.capsule"

    def handler(step: capsule.Step) -> Any:
        if case == "surrogate-error":
            raise ValueError(f"cannot read {UNDECODABLE}")
        if case == "broken-str":
            raise _BadStr
        if case == "surrogate-result-message":
            return {"\udcff": float("nan")}
        return {_BadKey(): 1}

    with capsule.create(p) as cap:
        cap.tasks.add("t", name="h", max_attempts=1)
        res = capsule.AgentLoop(cap, {"h": handler}).run()
        st = cap.tasks.queue().tasks["t"]
        assert res.failed == ["t"] and st.status == "failed" and st.error
        if case == "surrogate-error":
            assert st.error == "ValueError: cannot read caf\\udce9.txt"
    assert capsule.verify(p).ok


def test_hints_do_not_point_back_at_the_option_given(tmp_path: Path) -> None:
    """`actions --in-doubt` over 100 keys suggested --in-doubt; `tasks --now 0` warned of 'now'."""
    from tests.clirun import capsule_cli

    p = tmp_path / "a.capsule"
    def crash() -> None:
        raise SystemExit  # the process "dies" inside the effect: its intent stays, in doubt

    with capsule.create(p) as cap:
        for i in range(120):
            with pytest.raises(SystemExit):
                cap.run_once(f"k{i:03d}", crash)
    r = capsule_cli("actions", p, "--in-doubt")
    assert "120 actions (120 in-doubt); 20 more not shown (--limit N for the newest, --json)" in r.stdout
    with capsule.create(tmp_path / "b.capsule") as cap:
        cap.tasks.add("t", now=10**18)
    r = capsule_cli("tasks", tmp_path / "b.capsule", "--now", "1970-01-01T00:00:00Z")
    assert "ahead of --now" in r.stderr
