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
