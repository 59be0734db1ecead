"""I/O fault injection: every write, fsync and truncate the writer does can fail.

The writer reaches the file system only through ``capsule.format.file._pwrite``,
``_fsync`` and ``_ftruncate``. These tests replace them with a counting wrapper
that makes the N-th call of one primitive fail, for every N a scripted workload
reaches (create, commits, close with an INDEX, a reopen whose first commit recovers
a torn tail with ftruncate, more commits, close). After each fault they check the three promises of
the writer path (design 6):

* no commit is acknowledged unless the fsync that covers it succeeded;
* after a failed write or fsync the writer is poisoned: every later commit
  raises ``WriterPoisoned`` even though the fault is gone (a retried fsync can
  "succeed" over pages the kernel already dropped);
* the file stays recoverable: it verifies (a torn tail is allowed), a new
  writer opens it, and it holds every acknowledged record, possibly the
  records of the one commit whose fsync failed, and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import capsule
import capsule.format.file as cfile
from capsule import WriterPoisoned

FIXED_NS = 1_700_000_000_000_000_000
FILE_ID = bytes(range(16))
ERRNOS = [errno.EIO, errno.ENOSPC]


def clock() -> int:
    # A fixed clock makes every run of the workload write the same bytes, so
    # "the N-th call" names the same operation in every run.
    return FIXED_NS


class Injector:
    """Wraps the three primitives; the ``n``-th call of ``target`` fails.

    ``mode`` is ``"raise"`` (fail before writing anything), ``"partial"``
    (pwrite writes the first half of the buffer, then fails) or ``"short"``
    (pwrite writes half and honestly returns the short count: not a fault).
    Every call is logged as (primitive, succeeded) so a test can check what
    happened between the start of a commit and its acknowledgement.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real_pwrite = os.pwrite
        self.real_fsync = os.fsync
        self.real_ftruncate = os.ftruncate
        monkeypatch.setattr(cfile, "_pwrite", self._pwrite)
        monkeypatch.setattr(cfile, "_fsync", self._fsync)
        monkeypatch.setattr(cfile, "_ftruncate", self._ftruncate)
        self.reset(None, 0, errno.EIO, "raise")

    def reset(self, target: str | None, n: int, err: int, mode: str) -> None:
        self.target, self.n, self.err, self.mode = target, n, err, mode
        self.counts = {"pwrite": 0, "fsync": 0, "ftruncate": 0}
        self.events: list[tuple[str, bool]] = []
        self.fired: str | None = None  # primitive that failed, once it has
        self.armed = True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Test scaffolding (building a torn tail) is neither counted nor faulted."""
        self.armed = False
        try:
            yield
        finally:
            self.armed = True

    def _hit(self, name: str) -> bool:
        if not self.armed:
            return False
        self.counts[name] += 1
        return name == self.target and self.counts[name] == self.n and self.fired is None

    def _fail(self, name: str) -> OSError:
        self.fired = name
        self.events.append((name, False))
        return OSError(self.err, os.strerror(self.err))

    def _pwrite(self, fd: int, data: Any, offset: int) -> int:
        if self._hit("pwrite"):
            if self.mode in ("partial", "short") and len(data) > 1:
                half = len(data) // 2
                n = self.real_pwrite(fd, bytes(data[:half]), offset)
                if self.mode == "short":
                    self.events.append(("pwrite", True))
                    return n
            raise self._fail("pwrite")
        n = self.real_pwrite(fd, data, offset)
        if self.armed:
            self.events.append(("pwrite", True))
        return n

    def _fsync(self, fd: int) -> None:
        if self._hit("fsync"):
            raise self._fail("fsync")
        self.real_fsync(fd)
        if self.armed:
            self.events.append(("fsync", True))

    def _ftruncate(self, fd: int, size: int) -> None:
        if self._hit("ftruncate"):
            raise self._fail("ftruncate")
        self.real_ftruncate(fd, size)
        if self.armed:
            self.events.append(("ftruncate", True))


@dataclass
class Outcome:
    acked: set[str] = field(default_factory=set)  # acknowledged: must survive
    maybe: set[str] = field(default_factory=set)  # in flight when an fsync failed
    never: set[str] = field(default_factory=set)  # must not be in the file
    failed_step: str | None = None


class Stop(Exception):
    """The workload ends at the first injected fault."""


def texts(step: str, n: int) -> list[str]:
    return [f"{step} record {i}" for i in range(n)]


def attempt_commit(cap: capsule.Capsule, inj: Injector, out: Outcome, step: str, batch: list[str]) -> None:
    """One commit; on success check it was fsynced, on failure check the poison."""
    ids: list[str] = []
    start = len(inj.events)
    try:
        with cap.commit() as tx:
            for t in batch:
                ids.append(tx.remember(t, tags=["fault-test"]))
    except (WriterPoisoned, OSError) as e:
        assert inj.fired is not None, f"{step}: commit failed with no injected fault: {e!r}"
        out.failed_step = step
        new = set(ids) - out.acked
        if inj.fired == "fsync":
            out.maybe |= new  # written, then the fsync failed: either way is fine
        else:
            out.never |= new  # never fully written: must not appear
        check_poisoned(cap, inj, out, step)
        raise Stop from e
    # Acknowledged. Unless every record was a duplicate (nothing to write), the
    # calls made for this commit must end with a successful fsync, and none of
    # them may have failed.
    made = inj.events[start:]
    assert all(ok for _, ok in made), f"{step}: acknowledged although {made} failed"
    if set(ids) - out.acked:
        assert made and made[-1] == ("fsync", True), f"{step}: acknowledged without an fsync after its writes: {made}"
    out.acked |= set(ids)


def check_poisoned(cap: capsule.Capsule, inj: Injector, out: Outcome, step: str) -> None:
    """After the fault is gone, the writer must still refuse to commit."""
    before = len(inj.events)
    for k in range(2):
        post = f"{step} after poison {k}"
        ids: list[str] = []
        with pytest.raises(WriterPoisoned), cap.commit() as tx:
            ids.append(tx.remember(post))
        out.never |= set(ids)
    # A poisoned writer never touches the file again, and in particular never
    # retries fsync on the descriptor whose fsync failed.
    assert inj.events[before:] == []


def close_quietly(cap: capsule.Capsule, inj: Injector, out: Outcome, step: str) -> None:
    cap.close()
    # close() may write a final INDEX commit; it holds no records, so a fault
    # there loses nothing: close() does not raise, it records the error, and the
    # handle is still released.
    if cap.close_error is not None:
        assert inj.fired is not None, f"{step}: close failed with no injected fault: {cap.close_error!r}"
        out.failed_step = out.failed_step or step
    assert cap.closed


def make_torn_tail(path: Path, inj: Injector, out: Outcome) -> None:
    """Append a real interrupted append: the first 2/3 of a genuine commit's bytes."""
    scratch = path.with_name("scratch.capsule")
    with inj.paused():
        shutil.copyfile(path, scratch)
        with capsule.open(scratch, "a", clock=clock) as s:
            start = s.size
            with s.commit() as tx:
                ids = [tx.remember(t) for t in texts("torn", 4)]
            end = s.size
        data = scratch.read_bytes()[start : start + (end - start) * 2 // 3]
        scratch.unlink()
    assert len(data) > 0
    out.never |= set(ids)
    with path.open("ab") as f:
        f.write(data)
    rep = capsule.verify(path)  # reads only: nothing to count
    assert rep.ok and rep.torn_tail == len(data), rep


def workload(path: Path, inj: Injector) -> Outcome:
    """The scripted run. Returns what was acknowledged when it stopped."""
    out = Outcome()
    try:
        try:
            cap = capsule.create(path, clock=clock, file_id=FILE_ID)
        except (WriterPoisoned, OSError) as e:
            assert inj.fired is not None, f"create failed with no injected fault: {e!r}"
            out.failed_step = "create"
            raise Stop from e
        try:
            # 9 commits: enough frames that close() writes an INDEX (policy:
            # INDEX_ON_CLOSE_FRAMES), so faults also hit that path.
            for i in range(9):
                attempt_commit(cap, inj, out, f"phase1-{i}", texts(f"p1-{i}", 1 + i % 3))
        finally:
            close_quietly(cap, inj, out, "close1")
        if out.failed_step:
            raise Stop
        make_torn_tail(path, inj, out)
        # Opening writes nothing; the first commit recovers the torn tail:
        # pread it, ftruncate, fsync, then RECOVERY + records + COMMIT, fsync.
        cap = capsule.open(path, "a", clock=clock)
        try:
            for i in range(8):
                batch = texts(f"p2-{i}", 2)
                if i == 3:
                    batch.append("p1-0 record 0")  # already committed: deduplicated
                attempt_commit(cap, inj, out, f"phase2-{i}", batch)
        finally:
            close_quietly(cap, inj, out, "close2")
    except Stop:
        pass
    return out


def check_recoverable(path: Path, inj: Injector, out: Outcome) -> None:
    """With the fault removed, the file opens for writing and holds the right records."""
    inj.reset(None, 0, errno.EIO, "raise")
    if out.failed_step == "create":
        # A failed create leaves nothing behind that would block a retry.
        assert out.acked == set()
        with capsule.create(path, clock=clock, file_id=FILE_ID):
            pass
        assert capsule.verify(path).ok
        return
    before = capsule.verify(path)
    assert before.ok, before.first_error  # at worst a torn tail, never damage
    with capsule.open(path, "a", clock=clock) as cap:
        present = [r.id for r in cap.records()]
        assert len(present) == len(set(present)) == len(cap)
        got = set(present)
        missing = out.acked - got
        assert not missing, f"acknowledged records lost after fault in {out.failed_step}: {sorted(missing)[:3]}"
        extra = got - out.acked - out.maybe
        assert not extra, f"unacknowledged records present after fault in {out.failed_step}"
        assert not (got & out.never)
        for rid in out.acked:
            assert cap.get(rid).id == rid
        with cap.commit() as tx:  # the recovered writer works
            tx.remember("written after recovery")
        n = len(cap)
    after = capsule.verify(path)
    assert after.ok and after.torn_tail == 0 and after.records == n, after


def run_every_n(tmp_path: Path, inj: Injector, target: str, err: int, mode: str) -> int:
    """Fail the 1st, 2nd, ... call of ``target`` until a run finishes untouched."""
    n = 0
    while True:
        n += 1
        assert n < 200, "the workload never stopped reaching the faulted call"
        path = tmp_path / f"{target}-{n}" / "agent.capsule"
        path.parent.mkdir()
        inj.reset(target, n, err, mode)
        out = workload(path, inj)
        if inj.fired is None:
            # Past the last call: the whole workload went through.
            assert out.failed_step is None
            check_recoverable(path, inj, out)
            return n - 1
        assert out.failed_step is not None, f"fault in call {n} of {target} went unnoticed"
        check_recoverable(path, inj, out)


@pytest.fixture
def inj(monkeypatch: pytest.MonkeyPatch) -> Injector:
    return Injector(monkeypatch)


@pytest.mark.parametrize("err", ERRNOS, ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("target", ["pwrite", "fsync", "ftruncate"])
def test_every_call_can_fail(tmp_path: Path, inj: Injector, target: str, err: int) -> None:
    faulted = run_every_n(tmp_path, inj, target, err, "raise")
    # The workload really exercises each primitive (a rename or refactor that
    # bypasses the indirections would silently make this test vacuous).
    assert faulted >= {"pwrite": 15, "fsync": 15, "ftruncate": 1}[target]


@pytest.mark.parametrize("err", ERRNOS, ids=["EIO", "ENOSPC"])
def test_partial_write_then_error(tmp_path: Path, inj: Injector, err: int) -> None:
    # Half the bytes reach the file, then the write fails: a torn tail that
    # must be ignored by readers and dropped by the next writer.
    assert run_every_n(tmp_path, inj, "pwrite", err, "partial") >= 15


def test_short_writes_are_completed_not_fatal(tmp_path: Path, inj: Injector) -> None:
    # pwrite may legally write fewer bytes than asked without an error; the
    # writer must loop, not poison itself or acknowledge a half-written commit.
    for n in range(1, 25):
        path = tmp_path / f"short-{n}" / "agent.capsule"
        path.parent.mkdir()
        inj.reset("pwrite", n, errno.EIO, "short")
        out = workload(path, inj)
        assert out.failed_step is None
        check_recoverable(path, inj, out)
        assert len(out.acked) == sum(1 + i % 3 for i in range(9)) + 8 * 2


def test_failed_fsync_poisons_and_is_never_retried(tmp_path: Path, inj: Injector) -> None:
    path = tmp_path / "a.capsule"
    cap = capsule.create(path, clock=clock)
    with cap.commit() as tx:
        kept = tx.remember("kept")
    inj.reset("fsync", 1, errno.EIO, "raise")  # the next fsync fails
    with pytest.raises(WriterPoisoned) as ei, cap.commit() as tx:
        tx.remember("in flight")
    assert isinstance(ei.value.__cause__, OSError) and ei.value.__cause__.errno == errno.EIO
    fsyncs = inj.counts["fsync"]
    # The fault is gone now; the writer must still refuse, without fsyncing.
    for i in range(3):
        with pytest.raises(WriterPoisoned), cap.commit() as tx:
            tx.remember(f"later {i}")
    assert inj.counts["fsync"] == fsyncs
    # Reads of the committed snapshot still work on a poisoned writer.
    assert cap.get(kept).text == "kept"
    cap.close()  # releases the lock without writing (no INDEX on a poisoned writer)
    assert inj.counts["fsync"] == fsyncs
    with capsule.open(path, "a") as again:
        texts_now = {r.text for r in again.records()}
    assert "kept" in texts_now and not any(t.startswith("later") for t in texts_now)


@pytest.mark.parametrize("body", ["duplicate", "empty"])
def test_poisoned_writer_refuses_even_commits_that_write_nothing(tmp_path: Path, inj: Injector,
                                                                  body: str) -> None:
    # "Every later commit raises WriterPoisoned": a commit whose records are all
    # duplicates (or that is empty) must not report success on a dead writer,
    # or the caller carries on believing the writer is healthy.
    path = tmp_path / "a.capsule"
    cap = capsule.create(path, clock=clock)
    with cap.commit() as tx:
        tx.remember("known", time=1)
    inj.reset("fsync", 1, errno.EIO, "raise")  # the next fsync fails
    with pytest.raises(WriterPoisoned), cap.commit() as tx:
        tx.remember("in flight", time=1)
    add: Callable[[capsule.Transaction], object] = (
        (lambda t: t.remember("known", time=1)) if body == "duplicate" else (lambda t: None)
    )
    try:
        with pytest.raises(WriterPoisoned), cap.commit() as tx:
            add(tx)
    finally:
        cap.close()
