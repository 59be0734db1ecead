"""Application kinds (spec 12.3) written through ``GenericRecord``: what the integrations use.

Regression: a GenericRecord whose map was not in canonical key order used to commit and then make
every read of the file fail ("map keys not sorted")."""

from __future__ import annotations

import pytest

import capsule
from capsule.format.records import GenericRecord


def test_unsorted_app_record_is_stored_canonically_and_reads_back(tmp_path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        rid = tx.put(GenericRecord("letta.tool", {"time": 5, "zeta": 1, "alpha": {"b": 2, "a": "Cafe\u0301"}}))
    with capsule.open(path) as cap:
        rec = cap.get(rid)
        assert rec.kind == "letta.tool"
        assert list(rec.value) == ["alpha", "kind", "time", "zeta"]
        assert rec.value["alpha"] == {"a": "Caf\u00e9", "b": 2}  # NFC, keys sorted
    assert capsule.verify(path).ok


@pytest.mark.parametrize("kind, value, message", [
    ("memory", {"time": 1, "text": "x"}, "built in"),
    ("app.x", {"text": "no time"}, "time"),
    ("app.x", {"time": -1}, "time"),
    ("app.x", {"time": 1, "kind": "app.y"}, "app.y"),
    ("", {"time": 1}, "kind"),
    ("app.x", {"time": 1, 3: "int key"}, "not text"),
])
def test_bad_app_records_are_refused_before_anything_is_written(tmp_path, kind, value, message) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap:
        before = path.read_bytes()
        with pytest.raises(capsule.CapsuleError, match=message), cap.commit() as tx:
            tx.put(GenericRecord(kind, value))
    assert path.read_bytes() == before


def test_app_records_can_be_forgotten_and_redacted_and_the_file_verifies(tmp_path) -> None:
    path = tmp_path / "a.capsule"
    secret = "sk-live-APPKIND-secret-0123456789"
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            keep = tx.put(GenericRecord("app.thing", {"time": 1, "v": "kept"}))
            gone = tx.put(GenericRecord("app.thing", {"time": 2, "v": "forgotten"}))
            hidden = tx.put(GenericRecord("app.thing", {"time": 3, "v": secret}))
        with cap.commit() as tx:
            tx.forget(gone, reason="thread deleted")
            tx.redact(hidden, reason="leaked key")
        assert {r.id for r in cap.live("app.thing")} == {keep}
        assert [cap.is_live(x) for x in (keep, gone, hidden)] == [True, False, False]
        with pytest.raises(capsule.Redacted):
            cap.get(hidden)
    assert capsule.verify(path).ok
    out = tmp_path / "small.capsule"
    capsule.compact(path, out, keep="live")
    assert secret.encode() not in out.read_bytes()  # small records: stored uncompressed or not at all
    with capsule.open(out) as cap:
        assert {r.id for r in cap.live("app.thing")} == {keep}
        assert {r.id for r in cap.records("app.thing")} == {keep}  # history too: dropped by --keep live
    assert capsule.verify(out).ok


def test_built_in_kinds_other_than_memory_note_decision_stay_refused(tmp_path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            ident = tx.set_identity("agent-1")
        with pytest.raises(capsule.UsageError, match="identity"), cap.commit() as tx:
            tx.forget(ident)


def _create_and_add(path: str, n: int, barrier) -> str:
    barrier.wait()
    try:
        with capsule.create(path, exist_ok=True, timeout=20) as cap, cap.commit() as tx:
            tx.remember(f"from process {n}")
        return "ok"
    except Exception as e:  # reported to the parent, which asserts on it
        return f"{type(e).__name__}: {e}"


def test_create_exist_ok_races_between_processes(tmp_path) -> None:
    """Several processes create(exist_ok=True) one missing file at once: one creates it, the others
    open what it made (they used to get AlreadyExists when they lost the O_EXCL race)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for round_ in range(3):
        path = str(tmp_path / f"race{round_}.capsule")
        with ctx.Manager() as m:
            barrier = m.Barrier(4)
            with ctx.Pool(4) as pool:
                out = pool.starmap(_create_and_add, [(path, i, barrier) for i in range(4)])
        assert out == ["ok"] * 4
        with capsule.open(path) as cap:
            assert sorted(r.text for r in cap.records("memory")) == [f"from process {i}" for i in range(4)]


def test_create_exist_ok_waits_for_a_header_being_written(tmp_path) -> None:
    """The loser of the create race can find the winner's file before its header is written
    (CI saw 'not a capsule (no header)'): create(exist_ok=True) waits for it, up to its timeout."""
    import shutil
    import threading
    import time

    made = tmp_path / "made.capsule"
    capsule.create(made).close()
    p = tmp_path / "race.capsule"
    p.write_bytes(b"")  # the winner's O_EXCL file, nothing in it yet

    def finish() -> None:
        time.sleep(0.2)
        tmp = tmp_path / "whole"
        shutil.copyfile(made, tmp)
        p.write_bytes(tmp.read_bytes())  # its header and first commit land

    th = threading.Thread(target=finish)
    th.start()
    try:
        with capsule.create(p, exist_ok=True) as cap, cap.commit() as tx:
            tx.remember("after the race")
    finally:
        th.join()
    assert capsule.verify(p).ok
    # a file that never gets a header is what it is once the wait is over
    q = tmp_path / "empty.capsule"
    q.write_bytes(b"")
    t0 = time.monotonic()
    with pytest.raises(capsule.CorruptError, match="no header"):
        capsule.create(q, exist_ok=True, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5
