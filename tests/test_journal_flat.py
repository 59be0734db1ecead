"""The action journal is answered without a scan of history (spec 7.8, 18).

The folded journal lives in ``journal`` blobs written with the INDEX frames; a
reader loads them (each checked against its SHA-256 and its bounds) and folds
only the action records after them. What is promised:

* ``run_once`` reads about as many frames with 50,000 past actions as with
  2,000 (the scan it replaces read every frame of the file);
* the journal a reader gets from the snapshot is the fold of every action
  record, after reopening, in views, for readers that refresh, and
  ``actions(in_doubt=True)`` is the fold's in-doubt keys;
* a snapshot that fails a check (a flipped byte, a count that does not add up,
  an entry filed under another key, malformed sections) is ignored, reported
  and rebuilt from the records, never trusted; a capsule written without
  journal blobs is folded from its records.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.format import canonical as canon
from capsule.format import frames
from capsule.format.blob import BlobRef
from capsule.format.file import WriteHandle
from capsule.format.records import encode_record
from capsule.format.writer import write_commit
from capsule.run.actions import Action, fold_actions
from capsule.run.journal import JournalIndex
from capsule.run.journal_blob import (
    JOURNAL_BLOB,
    ActionState,
    BadSnapshot,
    Segment,
    encode_segment,
    key_hash,
    state_bytes,
)

T0 = 1_700_000_000 * 10**9


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about what is read; durability is tested elsewhere (test_kill, test_crash)."""
    monkeypatch.setattr(WriteHandle, "sync", lambda self: None)


def ticking() -> Callable[[], int]:
    t = [T0]

    def clock() -> int:
        t[0] += 1000
        return t[0]

    return clock


@contextmanager
def counting_frames() -> Iterator[list[int]]:
    """Count frame headers parsed by any capsule module (each frame read parses one)."""
    real = frames.parse_frame_header
    n = [0]

    def counted(*a: Any, **kw: Any) -> Any:
        n[0] += 1
        return real(*a, **kw)

    mods = [m for name, m in list(sys.modules.items())
            if name.startswith("capsule.") and getattr(m, "parse_frame_header", None) is real]
    for m in mods:
        m.parse_frame_header = counted  # type: ignore[attr-defined]
    try:
        yield n
    finally:
        for m in mods:
            m.parse_frame_header = real  # type: ignore[attr-defined]


def past_actions(cap: capsule.Capsule, n: int, *, per_commit: int = 50, start: int = 0) -> None:
    """``n`` keys run to completion, ``per_commit`` at a time (intent and result in one commit:
    the journal's records as run_once writes them, without 2n fsyncs)."""
    for lo in range(start, start + n, per_commit):
        with cap.commit() as tx:
            for i in range(lo, min(lo + per_commit, start + n)):
                key = f"email:{i}"
                tx._put(Action.build(time=cap.clock(), key=key, phase="intent", attempt=1, what="send"))
                tx._put(Action.build(time=cap.clock(), key=key, phase="result", attempt=1, value=f"msg-{i}"))


def fold_of(cap: capsule.Capsule) -> dict[str, dict[str, Any]]:
    return {k: vars(st) for k, st in fold_actions(cap.records(kind="action")).items()}


def journal_of(cap: capsule.Capsule) -> dict[str, dict[str, Any]]:
    return {st.key: vars(st) for st in cap.actions()}


def frames_for_run_once(path: Path) -> tuple[int, int]:
    """Frames read by one run_once of a new key and one of a done key, after the open."""
    calls: list[str] = []
    with capsule.open(path, "a", clock=ticking()) as cap:
        with counting_frames() as n:
            assert cap.run_once("email:new", lambda: calls.append("new") or "sent") == "sent"
            assert cap.run_once("email:7", lambda: calls.append("again") or "x") == "msg-7"
        assert cap._journal.index.doubt is None
    assert calls == ["new"]
    return n[0], 0


@pytest.mark.slow
def test_run_once_reads_as_many_frames_at_50k_past_actions_as_at_2k(tmp_path: Path, no_fsync: None) -> None:
    counts = {}
    for n in (2_000, 50_000):
        p = tmp_path / f"a{n}.capsule"
        with capsule.create(p, clock=ticking()) as cap:
            past_actions(cap, n)
        counts[n], _ = frames_for_run_once(p)
    # The scan this replaces read every frame: about 2 per commit, 2,000 here.
    with capsule.open(tmp_path / "a50000.capsule") as cap, counting_frames() as scan:
        assert len(list(cap.records(kind="action"))) == 100_002  # and the run_once above
    assert scan[0] > 1_900
    # Flat: the segments a lookup reads grow as log4(keys); the frames after the INDEX do not grow.
    assert counts[50_000] <= counts[2_000] + 8, counts
    assert counts[50_000] * 20 < scan[0], (counts, scan[0])


def test_run_once_on_a_capsule_of_past_actions_reads_a_few_frames(tmp_path: Path, no_fsync: None) -> None:
    """The quick form of the test above (5,000 past actions): a handful of frames, not the file."""
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as cap:
        past_actions(cap, 5_000)
    n, _ = frames_for_run_once(p)
    with capsule.open(p) as cap, counting_frames() as scan:
        list(cap.records(kind="action"))
    assert scan[0] > 150 and n * 5 < scan[0], (n, scan[0])


# --- the snapshot's journal is the fold of every action record --------------------------


class Boom(Exception):
    pass


def random_history(cap: capsule.Capsule, rnd: random.Random, steps: int) -> None:
    """run_once with values, failures and retries, unfinished ``action()`` handles (in
    doubt), resolves, and memories in between, so INDEX frames (and journal heads) land
    at every kind of moment."""
    for i in range(steps):
        key = f"k{rnd.randrange(60)}"
        r = rnd.random()
        try:
            if r < 0.45:
                cap.run_once(key, lambda i=i: {"n": i, "b": b"\x00\x01"}, what=f"w{i % 3}" if i % 2 else "",
                             policy=rnd.choice(["at-most-once", "retry-safe"]))
            elif r < 0.55:
                def fail() -> None:
                    raise Boom("no")
                cap.run_once(key, fail, policy="retry-safe")
            elif r < 0.65:
                # intent written, never completed: on a key others touch, or one left in doubt
                cap.action(key if i % 2 else f"d{i}", policy="retry-safe")._release()
            elif r < 0.75:
                cap.resolve_action(key, done=rnd.random() < 0.5, value=i)
            elif r < 0.85:
                cap.run_once(key, lambda: "late", reconcile=lambda k: capsule.NOT_DONE)
            else:
                with cap.commit() as tx:
                    for j in range(rnd.choice([1, 30, 300])):
                        tx.remember(f"memory {i} {j}")
        except (Boom, capsule.InDoubt, capsule.ActionFailed, capsule.UsageError):
            pass


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_snapshot_journal_is_the_fold_of_every_record(tmp_path: Path, no_fsync: None, seed: int) -> None:
    p = tmp_path / "a.capsule"
    rnd = random.Random(seed)
    k = capsule.generate_key()
    with capsule.create(p, clock=ticking()) as cap:
        for round_ in range(4):
            random_history(cap, rnd, 100)
            cap.checkpoint(f"c{round_}", key=k)
        assert journal_of(cap) == fold_of(cap)  # the writer's own view
    with capsule.open(p) as cap:
        assert JOURNAL_BLOB in cap._snap.blobs
        assert journal_of(cap) == fold_of(cap)
        want_doubt = sorted(k for k, st in fold_of(cap).items() if st["status"] == "in-doubt")
        assert want_doubt and [st.key for st in cap.actions(in_doubt=True)] == want_doubt
        assert cap._journal.index.doubt is None
        for label in ("c0", "c2"):
            with cap.view(label) as v:
                assert journal_of(v) == fold_of(v)
    with capsule.open(p, "a", clock=ticking()) as cap:  # a second session continues from the heads
        random_history(cap, rnd, 100)
    with capsule.open(p) as cap:
        assert journal_of(cap) == fold_of(cap)
        assert cap._journal.index.doubt is None


def test_a_reader_that_refreshes_catches_up(tmp_path: Path, no_fsync: None) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as w:
        past_actions(w, 500)
        with capsule.open(p) as r:
            assert r._journal.state("email:3").value == "msg-3"
            assert r._journal.state("email:900").status == "new"
            past_actions(w, 500, start=700)
            w.run_once("email:3", lambda: "never")  # done: nothing written
            assert r.refresh()
            assert r._journal.state("email:900").value == "msg-900"
            assert journal_of(r) == fold_of(r)


# --- a snapshot is never trusted before it checks -----------------------------------------


def head(cap: capsule.Capsule) -> BlobRef:
    return cap._snap.blobs[JOURNAL_BLOB]


def test_a_head_that_fails_its_sha256_is_reported_and_rebuilt(tmp_path: Path, no_fsync: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import capsule.format.writer as writer

    real = writer.blob_parts

    def bent(btype: str, content: bytes) -> tuple[list[list[bytes]], bytes, int]:
        parts, bid, size = real(btype, content)
        if btype == JOURNAL_BLOB:  # the INDEX names the true hash, the frames carry other bytes
            last = b"".join(parts[-1])
            parts[-1] = [last[:-1] + bytes([last[-1] ^ 1])]
        return parts, bid, size

    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as cap:
        cap.action("email:0")._release()  # in doubt
        with monkeypatch.context() as m:
            m.setattr(writer, "blob_parts", bent)
            past_actions(cap, 3_000, start=1)
        ref = head(cap)
    with capsule.open(p) as cap:
        assert cap._journal.state("email:7").value == "msg-7"
        assert "unusable" in (cap._journal.index.doubt or "")
        assert journal_of(cap) == fold_of(cap)
        assert [st.key for st in cap.actions(in_doubt=True)] == ["email:0"]
    calls: list[int] = []
    with capsule.open(p, "a", clock=ticking()) as cap:
        assert cap.run_once("email:7", lambda: calls.append(1)) == "msg-7"  # never re-run
        cap.run_once("email:new", lambda: "ok")
        with cap.commit() as tx:
            for j in range(5000):
                tx.remember(f"m{j}")  # an INDEX: the writer writes a head covering everything
    assert calls == []
    with capsule.open(p) as cap:
        assert head(cap).offset > ref.offset
        assert cap._journal.state("email:new").value == "ok"
        assert cap._journal.index.doubt is None
        assert journal_of(cap) == fold_of(cap)


def test_damage_inside_a_snapshot_frame_is_reported_not_trusted(tmp_path: Path, no_fsync: None) -> None:
    """A flipped byte in a BLOB frame is damage to the file (8.2): the journal says so."""
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as cap:
        past_actions(cap, 3_000)
        ref = head(cap)
    data = bytearray(p.read_bytes())
    data[ref.offset + 32 + 300] ^= 0x40
    p.write_bytes(bytes(data))
    with capsule.open(p) as cap, pytest.raises(capsule.CorruptError):
        cap._journal.state("email:7")


def forge_head(p: Path, content: bytes, items: list[Any] | None = None) -> None:
    """Append a commit whose INDEX names ``content`` as the journal head (a lying writer)."""
    with capsule.open(p, "a", clock=ticking()) as cap:
        write_commit(cap._store, items or [], force_index=True, at_index=lambda: [(JOURNAL_BLOB, content)])


def entry(key: str, status: str = "done", value: Any = "forged", attempt: int = 1) -> tuple[bytes, bytes, bool]:
    st = ActionState(key, status, attempt, value=value, by="fn", started=T0, finished=T0)
    return key_hash(key), state_bytes(st), status == "in-doubt"


def test_a_head_whose_count_does_not_add_up_is_not_trusted(tmp_path: Path, no_fsync: None) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as cap:
        cap.action("email:1")._release()  # in doubt: its intent has no result
    # The lie: "email:1 is done", covering only 0 of the capsule's 1 action record.
    forge_head(p, encode_segment(0, [], [entry("email:1")]))
    with capsule.open(p) as cap:
        assert cap._journal.state("email:1").status == "in-doubt"
        assert "does not cover" in (cap._journal.index.doubt or "")


def test_an_entry_filed_under_another_key_is_not_trusted(tmp_path: Path, no_fsync: None) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as cap:
        cap.action("email:1")._release()
    h, data, _ = entry("email:2")  # says email:2 ...
    forged = encode_segment(1, [], [(key_hash("email:1"), data, False)])  # ... filed where email:1 is looked up
    forge_head(p, forged)
    with capsule.open(p) as cap:
        assert cap._journal.state("email:1").status == "in-doubt"
        assert "filed under another key" in (cap._journal.index.doubt or "")
        assert [st.key for st in cap.actions()] == ["email:1"]


def test_a_capsule_written_without_journal_blobs_is_folded_from_its_records(
        tmp_path: Path, no_fsync: None, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.capsule"
    with monkeypatch.context() as m:
        m.setattr(JournalIndex, "blobs_at_index", lambda self, items: [])  # a writer before 1.2
        with capsule.create(p, clock=ticking()) as cap:
            past_actions(cap, 3_000)
            assert JOURNAL_BLOB not in cap._snap.blobs
    with capsule.open(p) as cap:
        assert cap._journal.state("email:5").value == "msg-5"
        assert cap._journal.index.doubt is None  # no snapshot is not a doubt
    with capsule.open(p, "a", clock=ticking()) as cap:
        cap.run_once("email:new", lambda: 1)
        with cap.commit() as tx:
            for j in range(5000):
                tx.remember(f"m{j}")
    with capsule.open(p) as cap:  # the next INDEX carried a head for everything
        assert head(cap) is not None and journal_of(cap) == fold_of(cap)


# --- the segment codec (18.1) -------------------------------------------------------------


def seg_of(entries: list[tuple[bytes, bytes, bool]], actions: int = 1) -> Segment:
    return Segment(None, encode_segment(actions, [], entries))


def test_segment_round_trip_and_lookup() -> None:
    states = [ActionState(f"k{i}", "in-doubt" if i % 3 == 0 else "done", 1 + i % 2, what="w" * (i % 2),
                          value=None if i % 3 == 0 else [i, {"x": b"\x01"}], by="" if i % 3 == 0 else "fn",
                          started=T0 + i, finished=None if i % 3 == 0 else T0 + i + 1) for i in range(200)]
    entries = sorted((key_hash(st.key), state_bytes(st), st.status == "in-doubt") for st in states)
    seg = seg_of(entries, actions=400)
    assert len(seg) == 200 and seg.actions == 400
    for st in states:
        i = seg.find(key_hash(st.key))
        assert i is not None and seg.state(i) == st
    assert seg.find(key_hash("absent")) is None
    assert sorted(seg.state(i).key for i in seg.doubt.tolist()) == sorted(
        st.key for st in states if st.status == "in-doubt")
    assert seg_of([]).find(key_hash("k")) is None


def _bad(content: bytes) -> None:
    with pytest.raises(BadSnapshot):
        Segment(None, content)


def test_malformed_segments_are_refused() -> None:
    a, b = entry("a"), entry("b")
    lo, hi = sorted([a, b])
    good = encode_segment(2, [], [lo, hi])
    Segment(None, good)
    _bad(encode_segment(2, [], [hi, lo]))  # keys out of order
    _bad(encode_segment(2, [], [lo, lo]))  # a key twice
    _bad(good[:-1])  # states shorter than the offsets say
    _bad(good + b"\x00")  # bytes after the last entry
    _bad(b"CAPJRNLX" + good[8:])  # magic
    head_len = int.from_bytes(good[8:12], "little")
    hdr = canon.decode(good[12 : 12 + head_len])
    for change in ({"doubt": 3}, {"count": 3}, {"older": [[10, 1, 5, b"\x00" * 31]]}, {"extra": 1}):
        h = canon.pack(dict(sorted({**hdr, **change}.items())))
        _bad(good[:8] + len(h).to_bytes(4, "little") + h + good[12 + head_len :])
    with pytest.raises(BadSnapshot):  # a default spelled out in an entry
        seg_of([(key_hash("a"), canon.pack({"attempt": 1, "by": "", "key": "a", "status": "done"}), False)]).state(0)


def test_users_still_cannot_put_action_records_and_the_record_encoding_is_unchanged() -> None:
    rec = Action.build(time=T0, key="k", phase="intent", attempt=1)
    rid, data = encode_record(rec)
    assert canon.decode(data) == {"attempt": 1, "key": "k", "kind": "action", "phase": "intent", "time": T0}


def test_the_task_queue_of_a_reader_that_refreshes_catches_up(tmp_path: Path, no_fsync: None) -> None:
    """The same rule for ``cap.tasks``: a reader folds the task records a refresh brought,
    and a capsule without task records is not read to find none."""
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=ticking()) as w:
        past_actions(w, 300)
        with capsule.open(p) as r, counting_frames() as n:
            assert r.tasks.queue().tasks == {}
            assert n[0] == 0
            w.tasks.add("t1")
            assert r.refresh()
            assert set(r.tasks.queue().tasks) == {"t1"}
            w.tasks.add("t2", deps=["t1"])
            w.tasks.claim("t1", "worker-1")
            assert r.refresh()
            q = r.tasks.queue()
            assert set(q.tasks) == {"t1", "t2"} and q.tasks["t1"].status == w.tasks.queue().tasks["t1"].status
