"""A fork's task queue is its parent's at the fork point (spec 15, 7.9).

The parent's queue folds every task record, live or dead: a rollback does not undo scheduler
events. A fork that copied only the live task records reopened a task the parent had finished
after a rollback's checkpoint (it ran again in the fork, its result gone) and forgot tasks added
since. Checked here against the parent's own view at the fork point, over random histories of task
events, memories, checkpoints and rollbacks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capsule
from capsule.run.events import TaskRefused

S = 10**9
KEY = capsule.generate_key()

OPS = st.lists(
    st.tuples(st.sampled_from(["add", "claim", "complete", "fail", "cancel", "remember", "checkpoint",
                               "rollback"]), st.integers(0, 2)),
    min_size=1, max_size=30)


def _clock() -> capsule.Clock:
    t = [1_700_000_000 * S]

    def clock() -> int:
        t[0] += S
        return t[0]

    return clock


def _remember(cap: capsule.Capsule, text: str) -> None:
    with cap.commit() as tx:
        tx.remember(text)


def _history(path: Path, ops: list[tuple[str, int]]) -> list[str]:
    """Run ``ops`` on a new capsule at ``path``; the checkpoint labels it made."""
    labels: list[str] = []
    with capsule.create(path, clock=_clock()) as cap:
        _remember(cap, "the first memory")
        for op, n in ops:
            q = cap.tasks.queue()
            try:
                if op == "add":
                    cap.tasks.add(f"t{n}", deps=[f"t{n - 1}"] if n and f"t{n - 1}" in q.tasks else [],
                                  backoff=1)
                elif op == "claim" and cap.tasks.due():
                    cap.tasks.claim(cap.tasks.due()[n % len(cap.tasks.due())], "w", lease=60 * S)
                elif op in ("complete", "fail") and (held := sorted(
                        t for t, s in q.tasks.items() if s.status == "claimed")):
                    t = held[n % len(held)]
                    if op == "complete":
                        cap.tasks.complete(t, "w", result=n)
                    else:
                        cap.tasks.fail(t, "w", error=f"e{n}")
                elif op == "cancel" and f"t{n}" in q.tasks:
                    cap.tasks.cancel(f"t{n}", reason="no")
                elif op == "remember":
                    _remember(cap, f"memory {n}")
                elif op == "checkpoint":
                    labels.append(f"c{len(labels)}")
                    cap.checkpoint(labels[-1], key=KEY)
                elif op == "rollback" and labels:
                    cap.rollback(labels[n % len(labels)], key=KEY)
            except TaskRefused:
                pass  # a cancel of a finished task: the writer refuses it, nothing is written
    return labels


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, pick=st.integers(0, 10))
def test_fork_queue_is_the_parents_at_the_fork_point(ops: list[tuple[str, int]], pick: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        parent, child = Path(d, "parent.capsule"), Path(d, "child.capsule")
        labels = _history(parent, ops)
        at = labels[pick % len(labels)] if labels and pick < 8 else None  # now, or a checkpoint
        with capsule.open(parent) as p:
            view = p.view(at) if at is not None else p
            want, root = view.tasks.queue(), view.state_root
            with capsule.fork(parent, child, at=at) as f:
                got = f.tasks.queue()
                assert got.tasks == want.tasks
                assert (got.time, got.rejected) == (want.time, want.rejected)
                assert f.state_root == root
        assert capsule.verify(child, parent=parent).ok


def test_a_task_finished_after_the_checkpoint_a_rollback_went_to_stays_finished(tmp_path: Path) -> None:
    """The review's case: a fork of the parent's current state ran a task the parent had done."""
    parent, child = tmp_path / "parent.capsule", tmp_path / "child.capsule"
    with capsule.create(parent, clock=_clock()) as cap:
        cap.tasks.add("send-report")
        cap.checkpoint("cp1", key=KEY)
        cap.tasks.claim("send-report", "w")
        cap.tasks.complete("send-report", "w", result={"sent": 1})
        _remember(cap, "after the checkpoint")
        cap.rollback("cp1", key=KEY)
        assert cap.tasks.queue().tasks["send-report"].status == "done"
    with capsule.fork(parent, child) as f:
        st_ = f.tasks.queue().tasks["send-report"]
        assert (st_.status, st_.result) == ("done", {"sent": 1})
        assert f.tasks.due() == []
        assert [m.text for m in f.records(kind="memory")] == []  # the state is still the rolled-back one
    assert capsule.verify(child, parent=parent).ok
