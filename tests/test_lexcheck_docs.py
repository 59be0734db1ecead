"""Deep verify re-reads the searchable records to rebuild each lexical snapshot (16.8):
the fast decoder (only the fields a document takes, in C) must give exactly the documents
the plain-map path gives, and leave to it any frame it cannot type."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.format import canonical as canon
from capsule.search.catalog import KIND_CODES
from capsule.search.lexcheck import _FIELDS, _doc, _doc_fields

_text = st.text(max_size=30)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), _text,
                    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != 0 or str(f) == "0.0"))
_session = st.one_of(_scalar, st.lists(_scalar, max_size=3), st.dictionaries(st.text(min_size=1, max_size=5), _scalar,
                                                                           max_size=3))
_time = st.integers(0, 2**63 - 1)


@st.composite
def _memory(draw: st.DrawFn) -> dict[str, Any]:
    v: dict[str, Any] = {"kind": "memory", "text": draw(_text), "time": draw(_time)}
    if draw(st.booleans()):
        v["tags"] = sorted(draw(st.sets(st.text(min_size=1, max_size=6), min_size=1, max_size=3)))
    if draw(st.booleans()):
        v["tier"] = draw(st.sampled_from(["scratch", "validated"]))
    if draw(st.booleans()):
        v["ttl"] = draw(st.integers(1, 2**63 - 1))
    meta = draw(st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: k != "session"), _scalar,
                                max_size=3))
    if draw(st.booleans()):
        meta["session"] = draw(_session)
    if meta:
        v["meta"] = meta
    return v


_decision = st.builds(lambda s, r, t: {"kind": "decision", "summary": s, "time": t} | ({"rationale": r} if r else {}),
                      _text, _text, _time)
_note = st.builds(lambda s, t: {"kind": "note", "text": s, "time": t}, _text, _time)
# a record of another kind whose fields share names with a document's but not their types
_other = st.builds(lambda t, x: {"kind": "task", "time": t, "text": x, "tags": {"a": 1}}, _time,
                  st.integers(-(2**63), 2**63 - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_memory(), _decision, _note, _other), min_size=1, max_size=12))
def test_fast_documents_are_the_plain_maps_documents(values: list[dict[str, Any]]) -> None:
    raw = canon.pack([canon.normalize(v) for v in values])
    plain = msgpack.unpackb(raw, raw=False)
    want = [_doc(bytes([i]) * 32, v) for i, v in enumerate(plain) if v["kind"] in KIND_CODES]
    try:
        fast = _FIELDS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        assert any(v["kind"] not in KIND_CODES for v in values)  # only another kind's fields refuse
        return
    got = [_doc_fields(bytes([i]) * 32, v) for i, v in enumerate(fast) if v.kind in KIND_CODES]
    assert got == want


def test_deep_verify_rebuilds_snapshots_of_every_document_kind(tmp_path: Any) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(400):
            tx.remember(f"turn {i} about Café deploys", tags=["ops", f"t{i % 3}"],
                        meta={"session": i // 50, "n": i}, tier="scratch" if i % 7 == 0 else "working",
                        ttl=3600 if i % 11 == 0 else None)
        tx.decide("ship the canary", rationale="errors fell")
        tx.note("step 3 of 5")
    with capsule.open(p) as cap:
        assert cap.index_info()["lexical"]["snapshot"] is not None  # close wrote one: verify rebuilds it
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error
