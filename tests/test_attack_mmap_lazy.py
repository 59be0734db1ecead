"""Adversarial review of the mapped-tables / lazy-import session (a6f9e31, 0456f77, c66e118,
111de13, f7e140c).

* DEFECT (older than the session, in the code a6f9e31 touched): an exception that lands
  after a commit's bytes are written and fsynced but before the writer publishes its new
  snapshot (KeyboardInterrupt from a Ctrl-C during the fsync: Python raises it as the fsync
  returns) leaves the handle unpoisoned with its old end. The next commit on the same
  handle is then written over the durable one: a reader already saw it, and after an INDEX
  commit the file no longer verifies and the acknowledged next commit is gone.
* DEFECT (older, same class as c66e118's tokenizer fix): ``run.policy._LOCK`` is a module
  lock held while a store's policy records are read; a fork taken then leaves the child a
  lock nobody releases, so the child's first gated action hangs for ever.
* Pinned (hold): tables a writer maps after its commit (``_SPLIT_AT`` lowered so small
  files take the mapped path) answer lookups, ``get``, membership and the state root as a
  fresh reader does, across thousands of INDEX commits with bounded maps/descriptors, a
  failed write cut back, a torn tail truncated by recovery, a fork child reading while
  the parent commits, and in-place compaction; the lazy imports resolve in fresh
  interpreters whatever is imported first.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import capsule
import capsule.format.file as cfile
import capsule.format.writer as cwriter
from tests.forking import fork_while_held


@pytest.fixture
def mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every table of a plain file is remapped after its commit, however small."""
    monkeypatch.setattr(cwriter, "_SPLIT_AT", 16)


def _kinds(cap: capsule.Capsule) -> list[str]:
    return [type(s._buf).__name__ for s in cap._store.snap.segments]


# --- 1. an exception after the fsync (DEFECT) ------------------------------------------------


@pytest.mark.parametrize("which", ["small", "index-head", "index-last"])
def test_an_interrupt_during_a_commits_fsync_never_lets_the_next_commit_overwrite_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """Ctrl-C while a commit fsyncs: the signal handler runs as ``os.fsync`` returns, so
    KeyboardInterrupt leaves ``write_commit`` after the bytes are durable (a reader in
    another process already sees them) but before ``store.snap`` moves. ``sync`` poisons
    only on OSError, so the handle goes on with its old end and the next commit is written
    over the durable one (6.4: a writer never rewrites committed bytes; a writer whose
    write or fsync fails must not write again through that descriptor). Small commit: the
    interrupted commit, seen by a reader, vanishes. INDEX commit: the file fails verify
    and the acknowledged next commit is lost. Either the next commit must be refused
    (poisoned: reopen recovers) or it must land after the durable bytes."""
    p = tmp_path / "a.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        tx.remember("first")
    real, calls = cfile._fsync, [0]
    hit = {"small": 1, "index-head": 1, "index-last": 2}[which]

    def ctrl_c(fd: int) -> None:
        real(fd)
        calls[0] += 1
        if calls[0] == hit:
            raise KeyboardInterrupt  # SIGINT during the fsync, raised as it returns

    monkeypatch.setattr(cfile, "_fsync", ctrl_c)
    with pytest.raises(KeyboardInterrupt), cap.commit() as tx:
        if which == "small":
            b = [tx.remember("the interrupted commit, bigger than the one after it")]
        else:  # over 4,096 records: frames, fsync, INDEX + COMMIT, fsync
            b = tx.put_many([{"text": f"n{i}"} for i in range(5000)])
    monkeypatch.setattr(cfile, "_fsync", real)
    seen = None
    if which != "index-head":
        with capsule.open(p) as r:  # another process's reader, right now
            seen = b[0] in r
        assert seen
    acked = None
    try:
        with cap.commit() as tx:
            acked = tx.remember("after the interrupt")
    except capsule.WriterPoisoned:
        pass  # refusing is fine: reopen recovers
    cap.close()
    rep = capsule.verify(p)
    assert rep.ok, "the next commit on the interrupted handle left a file that fails verification"
    with capsule.open(p) as r:
        if seen:
            assert b[0] in r, "a durable commit a reader had seen was overwritten by the next one"
        if acked is not None:
            assert acked in r, "an acknowledged commit was lost"


# --- 2. a module lock held across fork (DEFECT) --------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_a_thread_reads_policy_records_does_not_deadlock_the_child(tmp_path: Path) -> None:
    """``run.policy._policy_records`` holds the module-level ``_LOCK`` while it reads every
    RECORDS frame of a store it has not seen (seconds on a big file). c66e118 re-arms
    tokenizer 2's lock in a fork child; this one is not: a child forked meanwhile (a
    multiprocessing worker under the default fork start method) hangs at its first
    ``run_once`` on any capsule with a constraint, its own handle included."""
    from capsule.run import policy

    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.constrain("outgoing email needs sign-off", rule={"action": "email.*"})

    def child() -> bool:
        with capsule.open(p, "a") as c:
            try:
                c.run_once("email.send:1", lambda: None)
            except capsule.PolicyViolation:
                return True
        return False

    status = fork_while_held(lambda: policy._LOCK, child)
    if os.WIFSIGNALED(status):
        pytest.fail(f"the fork child deadlocked on run.policy._LOCK (killed by signal {os.WTERMSIG(status)})")
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_a_thread_holds_the_e5_lock_does_not_deadlock_the_child() -> None:
    """The e5 embedder loads and runs under one module lock; a child forked meanwhile gets a
    fresh lock (and loads its own engine), so its first embedding does not wait forever."""
    from capsule.search import embed

    def child() -> bool:
        with embed._e5_lock:
            return embed._e5_engine is None

    status = fork_while_held(lambda: embed._e5_lock, child)
    assert not os.WIFSIGNALED(status), "the fork child deadlocked on search.embed._e5_lock"
    assert os.waitstatus_to_exitcode(status) == 0


# --- 3. mapped tables (hold) -------------------------------------------------------------------


def _same_as_reader(cap: capsule.Capsule, p: Path, ids: list[str]) -> None:
    with capsule.open(p) as r:
        assert len(r) == len(cap) and r.state_root == cap.state_root
        for rid in ids:
            assert rid in cap and rid in r and cap.get(rid).text == r.get(rid).text
    assert ("0" * 64) not in cap


def test_many_index_commits_keep_lookups_and_bounded_maps(tmp_path: Path, mapped: None) -> None:
    p = tmp_path / "a.capsule"
    cap = capsule.create(p)

    def maps() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for line in f if str(p) in line)

    ids, most = [], 0
    for i in range(600):
        with cap.commit() as tx:
            ids.append(tx.remember(f"m{i}"))
        cap._write_commit([], force_index=True)
        if os.path.exists("/proc/self/maps"):
            most = max(most, maps())
    assert "memoryview" in _kinds(cap)
    segs = len(cap._store.snap.segments) + len(cap._store.snap.labels)
    assert most <= 2 * segs + 12, f"{most} maps of the file for {segs} tables"
    _same_as_reader(cap, p, ids[::37] + ids[-3:])
    cap.close()
    assert capsule.verify(p).ok


def test_a_failed_write_after_a_mapped_commit_leaves_lookups_whole(tmp_path: Path, mapped: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        a = tx.put_many([{"text": f"m{i}"} for i in range(5000)])
    assert _kinds(cap) == ["memoryview"]

    def enospc(*_: Any) -> int:
        raise OSError(errno.ENOSPC, "no space left on device")

    monkeypatch.setattr(cfile, "_pwrite", enospc)
    with pytest.raises(capsule.WriterPoisoned), cap.commit() as tx:
        tx.put_many([{"text": f"z{i}"} for i in range(5000)])
    monkeypatch.undo()
    assert cap.get(a[17]).text == "m17" and a[4999] in cap and os.path.getsize(p) == cap.size
    cap.close()
    with capsule.open(p, "a") as cap:
        assert len(cap) == 5000
    assert capsule.verify(p).ok


def test_a_torn_tail_truncated_under_mapped_tables(tmp_path: Path, mapped: None) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        a = tx.put_many([{"text": f"m{i}"} for i in range(5000)])
    with open(p, "ab") as f:
        f.write(b"\0" * 200_000)  # a torn tail larger than a page or fifty
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:  # recovery truncates the tail the open mapped, then maps anew
            b = tx.put_many([{"text": f"n{i}"} for i in range(5000)])
        assert _kinds(cap) == ["memoryview"]
        _same_as_reader(cap, p, [a[0], a[-1], b[0], b[-1]])
    assert capsule.verify(p).ok


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_reads_mapped_tables_while_the_parent_commits(tmp_path: Path, mapped: None) -> None:
    p = tmp_path / "a.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        a = tx.put_many([{"text": f"m{i}"} for i in range(5000)])
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 4
        try:
            signal.alarm(10)
            os.close(w)
            os.read(r, 1)  # the parent has committed (and remapped) meanwhile
            code = 0 if cap.get(a[10]).text == "m10" and a[4000] in cap and len(cap) == 5000 else 3
            cap.close()  # a child's close drops its descriptor only
        finally:
            os._exit(code)
    os.close(r)
    with cap.commit() as tx:
        b = tx.put_many([{"text": f"n{i}"} for i in range(5000)])
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _same_as_reader(cap, p, [a[1], b[1]])
    cap.close()
    assert capsule.verify(p).ok


def test_in_place_compaction_of_a_writer_with_mapped_tables(tmp_path: Path, mapped: None) -> None:
    p = tmp_path / "a.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        a = tx.put_many([{"text": f"m{i}"} for i in range(5000)])
    with cap.commit() as tx:
        tx.forget(a[3])
    root = cap.state_root
    cap.compact(keep="live")
    assert cap.closed
    with capsule.open(p, "a") as cap:
        assert cap.state_root == root and a[3] not in cap and cap.get(a[4]).text == "m4"
        with cap.commit() as tx:
            b = tx.put_many([{"text": f"n{i}"} for i in range(5000)])
        assert "memoryview" in _kinds(cap)
        _same_as_reader(cap, p, [a[4], b[0]])
    assert capsule.verify(p).ok


# --- 4. lazy imports in fresh interpreters (hold) -----------------------------------------------

_FRESH = r"""
import os, sys, tempfile
first = sys.argv[1]
d = tempfile.mkdtemp(dir=sys.argv[2])
p = os.path.join(d, "a.capsule")
if first == "why":
    import capsule.questions.why as W
    assert not {"capsule.questions.audit", "capsule.questions.timeline"} & set(sys.modules)
    import capsule
    with capsule.create(p) as cap, cap.commit() as tx:
        m = tx.remember("the freeze")
        dec = tx.decide("ship thursday", rationale="freeze", evidence=[m])
    with capsule.open(p) as cap:
        assert W.why(cap, dec).to_dict()
elif first == "entry-fork":
    from capsule.handle.entry import create, fork
    with create(p) as cap, cap.commit() as tx:
        tx.remember("x")
    fork(p, p + ".f").close()
elif first == "capsule-fork":
    import capsule
    capsule.create(p).close()
    with capsule.create(p + ".src") as cap, cap.commit() as tx:
        tx.remember("x")
    capsule.fork(p + ".src", p + ".f").close()
    assert capsule.verify(p + ".f", parent=p + ".src").ok
elif first == "all":
    import capsule
    for n in capsule.__all__:
        getattr(capsule, n)
    import capsule.questions
    assert not hasattr(capsule.questions, "why") or callable(capsule.questions.why) is False
print("ok")
"""


@pytest.mark.parametrize("first", ["why", "entry-fork", "capsule-fork", "all"])
def test_lazy_imports_resolve_whatever_a_fresh_interpreter_imports_first(tmp_path: Path, first: str) -> None:
    out = subprocess.run([sys.executable, "-c", _FRESH, first, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
