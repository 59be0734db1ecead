"""A writer handle inherited across ``os.fork()`` (audit F6).

The child shares the parent's descriptor and lock but not its in-memory
snapshot: were it to commit, the parent's next commit would land on the same
offset and silently replace an acknowledged commit. A writer remembers the pid
that opened it; in any other process every write (commit, run_once,
checkpoint, tasks...) is refused with a ``UsageError`` naming that pid, reads
keep working on the snapshot inherited at the fork, and ``close`` releases
nothing of the parent's (no INDEX written, lock file left in place).
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import capsule

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child; return what it returned (JSON) or raise what it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            try:
                out = {"ok": fn()}
            except BaseException as e:  # noqa: BLE001 - sent to the parent
                out = {"error": type(e).__name__, "message": str(e), "tb": traceback.format_exc(),
                       "usage": isinstance(e, capsule.UsageError)}
            os.write(w, json.dumps(out, default=repr).encode())
            os.close(w)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def test_a_forked_child_reads_but_cannot_commit_and_the_parent_carries_on(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            before = tx.remember("the build server is ci-7", tags=["infra"])
        seen = {"text": "the build server is ci-7", "len": 1, "root": cap.state_root, "hits": [before]}

        def child() -> Any:
            # reads work on the snapshot inherited at the fork
            got = {"text": cap.get(before).text, "len": len(cap), "root": cap.state_root,
                   "hits": [h.id for h in cap.search("build server")]}
            assert got == seen, got
            with cap.commit() as tx:
                tx.remember("the child's commit")
            return cap.size

        got = in_child(child)
        assert got.get("usage") is True, got
        assert got["error"] == "UsageError"
        assert f"opened by pid {os.getpid()}" in got["message"] and "fork" in got["message"]
        with cap.commit() as tx:
            after = tx.remember("the parent's commit after the fork")
        assert cap.commit_count == 3
    report = capsule.verify(p)
    assert report.ok, report.first_error
    with capsule.open(p) as cap:
        assert len(cap) == 2 and cap.get(before) and cap.get(after)
        assert [r.text for r in cap.records()] == ["the build server is ci-7", "the parent's commit after the fork"]


def test_run_once_in_a_forked_child_is_refused_without_running_the_effect(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    marker = tmp_path / "effect-ran"
    with capsule.create(p) as cap:

        def child() -> Any:
            return cap.run_once("email:42", lambda: marker.write_text("child"))

        got = in_child(child)
        assert got.get("usage") is True and "fork" in got["message"], got
        assert not marker.exists()
        assert cap.run_once("email:42", lambda: marker.write_text("parent") and "sent") == "sent"
        assert marker.read_text() == "parent"
        assert [(a.key, a.status, a.attempt) for a in cap.actions()] == [("email:42", "done", 1)]
    assert capsule.verify(p).ok


@pytest.mark.parametrize("write", ["checkpoint", "tasks", "resolve", "save_index"])
def test_every_write_path_is_refused_in_a_forked_child(tmp_path: Path, write: str) -> None:
    p = tmp_path / "a.capsule"
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("a vector", embedding=[1.0, 0.0])
        size = cap.size
        calls: dict[str, Callable[[], Any]] = {
            "checkpoint": lambda: cap.checkpoint("c1", key=key),
            "tasks": lambda: cap.tasks.add("t"),
            "resolve": lambda: cap.resolve_action("k", done=True),
            "save_index": lambda: cap.save_index(),
        }
        got = in_child(calls[write])
        assert got.get("usage") is True and "fork" in got["message"], got
        assert cap.size == size and os.path.getsize(p) == size
        cap.checkpoint("c1", key=key)
    assert capsule.verify(p, trust=key.public_key).ok


def test_close_in_a_forked_child_leaves_the_parents_lock_held(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    lock = p.with_name(p.name + ".lock")
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(300):
                tx.remember(f"fact {i}")  # enough that close() would like to write an INDEX
        size = cap.size

        def child() -> Any:
            cap.close()
            return [cap.closed, cap.close_error is None]

        assert in_child(child) == {"ok": [True, True]}
        assert os.path.getsize(p) == size  # the child wrote no final INDEX
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(capsule.Locked) as ei:
            capsule.open(p, "a")
        assert ei.value.pid == os.getpid()
        with cap.commit() as tx:
            tx.note("the parent still writes")
    assert not lock.exists()
    assert capsule.verify(p).ok
