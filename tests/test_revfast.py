"""The checked-in-C revert decoder (capsule/state/revfast.py) against the reference reader.

The rule it must keep: for any bytes, it returns exactly the record the reference reader
(``canonical.decode`` + ``decode_record``) returns, or None; never a record where the reference
raises. Checked on random valid reverts, on the same bytes damaged in every way a hand-made
file could spell them, and end to end: a file full of lifecycle events folds to the same
liveness and state root with and without it.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.core.errors import DataError
from capsule.format import canonical as canon
from capsule.format import records
from capsule.format.records import decode_record, encode_record, record_id
from capsule.state.kinds import Revert
from capsule.state.revfast import decode_revert as _decode_revert


def decode_revert(data: bytes) -> object:
    return _decode_revert(Revert, data)


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


ids = st.binary(min_size=32, max_size=32)
texts = st.one_of(st.just(""), st.text(max_size=12), st.sampled_from(["e\u0301", "\u00e9", "caf\u00e9", "x\x00y"]))


def _reference(data: bytes) -> object:
    """What every reader returns for these bytes, or the exception class it raises."""
    try:
        value = canon.decode(data)
        if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
            return DataError
        return decode_record(value, record_id(value["kind"], data))
    except DataError as e:
        return type(e)


def _same(fast: object, ref: object) -> None:
    if fast is None:
        return  # the exact way decides
    assert isinstance(ref, Revert), f"fast decoded what the reference refuses: {ref}"
    assert isinstance(fast, Revert) and fast == ref and fast.id == ref.id


@st.composite
def reverts(draw: st.DrawFn) -> Revert:
    op = draw(st.sampled_from([None, "forget", "redact", "supersede", "promote", "demote"]))
    time = draw(st.integers(0, (1 << 63) - 1))
    after = draw(ids)
    if op is None:
        return Revert(time=time, after=after, to=draw(st.one_of(st.none(), ids)),
                      drop=tuple(draw(st.lists(ids, max_size=4, unique=True))),
                      restore=tuple(draw(st.lists(ids, max_size=4, unique=True))))
    drop = tuple(draw(st.lists(ids, min_size=1, max_size=1 if op in ("promote", "demote") else 5, unique=True)))
    by: tuple[bytes, ...] = ()
    if op not in ("forget", "redact"):
        by = tuple(draw(st.lists(ids.filter(lambda x: x not in drop), min_size=1,
                                 max_size=1 if op in ("promote", "demote") else 3, unique=True)))
    restore = tuple(draw(st.lists(st.sampled_from(by), unique=True))) if by else ()
    return Revert(time=time, after=after, drop=drop, restore=restore, op=op, by=by,
                  evidence=tuple(draw(st.lists(ids, max_size=3, unique=True))),
                  reason=nfc(draw(texts)), actor=nfc(draw(st.text(max_size=8))))


@settings(max_examples=300, deadline=None)
@given(reverts())
def test_a_valid_revert_decodes_to_the_reference_record(rec: Revert) -> None:
    try:
        _, data = encode_record(rec)
    except DataError:
        return  # a text the writer itself refuses (not NFC after all ...)
    ref = _reference(data)
    fast = decode_revert(data)
    assert isinstance(ref, Revert)
    assert fast is not None, "a plain valid revert should take the fast way"
    _same(fast, ref)


@settings(max_examples=400, deadline=None)
@given(reverts(), st.data())
def test_damaged_bytes_never_decode_where_the_reference_refuses(rec: Revert, data: st.DataObject) -> None:
    try:
        _, raw = encode_record(rec)
    except DataError:
        return
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    _same(decode_revert(bytes(b)), _reference(bytes(b)))


def _spelled(value: dict[str, object]) -> bytes:
    raw: bytes = msgpack.packb(value, use_bin_type=True)
    return raw


@pytest.mark.parametrize("change", [
    "default to spelled out", "empty reason spelled out", "keys unsorted", "duplicate id in drop",
    "reason not NFC", "time as uint64", "id of 31 bytes", "unknown field", "op without drop",
    "by without op", "forget with by", "promote of two", "by names a dropped id", "str instead of bin",
    "negative time",
])
def test_every_non_canonical_or_invalid_spelling_goes_the_exact_way(change: str) -> None:
    a, b, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    v: dict[str, object] = {"after": a, "drop": [b], "kind": "revert", "op": "forget", "time": 5}
    raw: bytes | None = None
    if change == "default to spelled out":
        v["to"] = None
    elif change == "empty reason spelled out":
        v["reason"] = ""
    elif change == "keys unsorted":
        raw = _spelled({"time": 5, "after": a, "drop": [b], "kind": "revert", "op": "forget"})
    elif change == "duplicate id in drop":
        v["drop"] = [b, b]
    elif change == "reason not NFC":
        v["reason"] = "e\u0301"
    elif change == "time as uint64":
        raw = _spelled(v).replace(b"\xa4time\x05", b"\xa4time\xcf" + (5).to_bytes(8, "big"))
    elif change == "id of 31 bytes":
        v["after"] = a[:31]
    elif change == "unknown field":
        v["extra"] = 1
    elif change == "op without drop":
        v["drop"] = []
    elif change == "by without op":
        del v["op"]
        v["by"] = [c]
    elif change == "forget with by":
        v["by"] = [c]
    elif change == "promote of two":
        v.update(op="promote", drop=[b, c], by=[a])
    elif change == "by names a dropped id":
        v.update(op="supersede", by=[b])
    elif change == "str instead of bin":
        v["after"] = a.hex()
    elif change == "negative time":
        v["time"] = -1
    if raw is None:
        raw = _spelled(dict(sorted(v.items())))
    assert decode_revert(raw) is None
    assert not isinstance(_reference(raw), Revert)


def test_a_memory_that_mentions_revert_is_not_taken_for_one() -> None:
    data = canon.pack({"kind": "memory", "text": "revert", "time": 1})
    assert decode_revert(data) is None


def _fold(path: str) -> tuple[str, int, int, int]:
    from capsule.state.liveness import fold_of

    with capsule.open(path) as cap:
        root = cap.state_root
        f = fold_of(cap._store)
        return root, len(f.dead), len(f.events), len(f.redacted)


def test_a_file_of_lifecycle_events_folds_alike_both_ways(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "events.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            mids = [tx.remember(f"fact {i}", tags=["t"]) for i in range(60)]
        for i in range(0, 40, 4):  # one event of each op, commit after commit
            with cap.commit() as tx:
                tx.forget(mids[i], reason="stale")
            with cap.commit() as tx:
                tx.redact(mids[i + 1], reason="secr\u00e9t")
            with cap.commit() as tx:
                tx.supersede(mids[i + 2], f"fact {i + 2}, revised")
            with cap.commit() as tx:
                tx.promote(mids[i + 3], "validated")
    fast = _fold(str(p))
    monkeypatch.setattr(records, "_FAST", {})
    assert _fold(str(p)) == fast
    assert fast[2] == 40 and fast[3] == 10


def test_a_revert_read_by_id_is_the_reference_record(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "get.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            a, b = tx.remember("old"), tx.remember("other")
        with cap.commit() as tx:
            tx.supersede(a, "new", reason="r\u00e9vis\u00e9")
        with cap.commit() as tx:
            tx.forget(b)
    with capsule.open(p) as cap:
        events = [r for _, _, r in walk_reverts(cap)]
        got: list[Any] = [cap._store.get(bytes.fromhex(e.id)) for e in events]
    monkeypatch.setattr(records, "_FAST", {})
    with capsule.open(p) as cap:
        ref = [cap._store.get(bytes.fromhex(e.id)) for e in events]
    assert len(events) == 2 and got == ref
    assert all(isinstance(g, Revert) for g in got) and [g.id for g in got] == [e.id for e in events]
    assert [g.op for g in got] == ["supersede", "forget"] and got[0].reason == "r\u00e9vis\u00e9"


def walk_reverts(cap: capsule.Capsule) -> list[tuple[int, int, Revert]]:
    from capsule.format.kindwalk import walk

    return list(walk(cap._store, ("revert",)))
