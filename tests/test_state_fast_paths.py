"""The fast paths of `capsule state` against the exact ones they stand in for.

Three shortcuts keep a 100k-memory `state --json` fast, and each must give what the slow way
gives, byte for byte: a frame's times written as ISO-8601 in NumPy (``_IsoCache.many``) against
``core.clock.iso`` one by one; a RECORDS frame of plain memories taken in bulk
(``memframe.memory_frame``) against the record-by-record decode and fold; and the CLI's
``state --json`` (collector paused, the newline written apart) against the library document
with the escapes every ``--json`` output gets.
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from capsule_cli._render import escape_json
from capsule_cli.main import app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import capsule
from capsule.core.clock import iso
from capsule.core.errors import DataError
from capsule.format import canonical as canon
from capsule.format.commit import decode_records_payload
from capsule.format.records import TIERS, decode_record, memory_value, record_id
from capsule.format.writer import write_commit
from capsule.state.checkpoints import vouch_approvals
from capsule.state.fold import _ISO_VECTOR_MIN, _iso_array, _IsoCache, fold
from capsule.state.memframe import memory_frame

MAX_NS = (1 << 63) - 1
S = 1_000_000_000

# --- times: the NumPy table against iso, one time at a time ----------------------------------

#: any int64 time, whole seconds, fractions with every count of trailing zeros, the ends
times = st.one_of(
    st.integers(0, MAX_NS),
    st.integers(0, MAX_NS // S).map(lambda s: s * S),
    st.tuples(st.integers(0, MAX_NS // S - 1), st.integers(0, S - 1), st.integers(0, 9)).map(
        lambda t: t[0] * S + t[1] // 10 ** t[2] * 10 ** t[2]),
    st.integers(0, 1000).map(lambda d: MAX_NS - d),
    st.integers(0, 1000),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(times, max_size=3 * _ISO_VECTOR_MIN), st.integers(0, MAX_NS // S))
def test_many_spells_every_time_as_iso_does(ts: list[int], second: int) -> None:
    same = [second * S + (t % S) for t in ts]  # one second shared, as in a commit's frame
    for batch in (ts, same, ts + same):
        assert _IsoCache().many(batch) == [iso(t) for t in batch]


@settings(max_examples=100, deadline=None)
@given(st.lists(times, min_size=1, max_size=200))
def test_the_numpy_table_spells_every_time_as_iso_does(ts: list[int]) -> None:
    assert _iso_array(np.array(ts, dtype=np.int64)) == [iso(t) for t in ts]


def test_the_numpy_table_on_a_million_random_times() -> None:
    rnd = random.Random(14)
    ts = [rnd.randrange(0, MAX_NS + 1) // 10 ** rnd.randrange(10) * 10 ** rnd.randrange(10) % (MAX_NS + 1)
          for _ in range(1_000_000)]
    ts[:6] = [0, 1, S - 1, S, MAX_NS, MAX_NS - MAX_NS % S]
    got = _iso_array(np.array(ts, dtype=np.int64))
    assert got == [iso(t) for t in ts]
    assert got[4] == "2262-04-11T23:47:16.854775807Z" and got[0] == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize("odd", [-1, -S, -(1 << 63), 1 << 63, 1 << 70])
def test_many_takes_times_outside_int64_the_slow_way(odd: int) -> None:
    """No record holds one, but ``many`` stays ``iso`` for any int."""
    batch = [5 * S + i for i in range(_ISO_VECTOR_MIN)] + [odd]
    assert _IsoCache().many(batch) == [iso(t) for t in batch]


# --- a frame of plain memories: in bulk against record by record ------------------------------

#: text that needs JSON escapes, the terminal escapes of 13.2, and NFC that is not ASCII
_ALPHABET = st.sampled_from(["a", "Z", " ", "0", '"', "\\", "\t", "\x00", "\x7f", "\x85", "\u2028", "\u202e",
                             "é", "e\u0301", "ü", "日", "😀", "<\u0338", "\ufeff", "Å"])
words = st.lists(_ALPHABET, min_size=1, max_size=12).map("".join)
plain = st.one_of(words, st.integers(-(1 << 63), (1 << 64) - 1), st.booleans(), st.none())


@st.composite
def memories(draw: st.DrawFn, *, floats: bool = False) -> dict[str, Any]:
    kw: dict[str, Any] = {"time": draw(times)}
    if draw(st.booleans()):
        kw["tags"] = draw(st.lists(words, max_size=4))
    if draw(st.booleans()):
        # keys distinct in NFC too: "é" and "e\u0301" are one key once normalized, refused as a duplicate
        kw["meta"] = draw(st.dictionaries(words, st.one_of(plain, st.floats(-1e9, 1e9)) if floats else plain,
                                          max_size=4).filter(lambda m: len({unicodedata.normalize("NFC", k) for k in m}) == len(m)))
    if draw(st.booleans()):
        kw["tier"] = draw(st.sampled_from(TIERS))
    if draw(st.integers(0, 4)) == 0:
        kw["ttl"] = draw(st.integers(1, MAX_NS))
    if draw(st.integers(0, 4)) == 0:
        kw["source"] = draw(words)
    if draw(st.integers(0, 4)) == 0:
        kw["embedding"] = draw(st.lists(st.integers(-1000, 1000).map(lambda i: i / 8 or 0.0), min_size=1,
                                        max_size=6))
    if draw(st.integers(0, 4)) == 0:
        lo, hi = sorted(draw(st.lists(times, min_size=2, max_size=2, unique=True)))
        kw["valid_from"], kw["valid_to"] = draw(st.sampled_from([(lo, hi), (lo, None), (None, hi)]))
    return memory_value(draw(words), **kw)


def _exact(raw: bytes) -> tuple[list[bytes], dict[str, list[dict[str, Any]]]]:
    """The ids and the state's memories as the record-by-record decode and fold give them."""
    recs = [decode_record(v, record_id(v["kind"], data)) for v, data in decode_records_payload(raw, 0, 0)]
    return [bytes.fromhex(r.id) for r in recs], fold(recs).memories


def _text(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _by_tier(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in TIERS}
    for e in entries:
        out[e["tier"]].append(e)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(memories(), min_size=1, max_size=3 * _ISO_VECTOR_MIN))
def test_a_frame_of_plain_memories_in_bulk_is_the_exact_fold(values: list[dict[str, Any]]) -> None:
    raw = canon.pack(values)
    dims: list[bytes] = []
    fast = memory_frame(raw, 0, 0, _IsoCache(), dims)
    assert fast is not None  # plain memories, all of them: the bulk path takes the frame
    rids, entries = fast
    want_ids, want = _exact(raw)
    assert rids == want_ids
    assert _by_tier(entries) == want
    assert _text(_by_tier(entries)) == _text(want)  # and as JSON: True is not 1 there
    assert b"".join(dims) == b"".join(v["embedding"]["data"] for v in values if "embedding" in v)


@settings(max_examples=60, deadline=None)
@given(st.lists(memories(floats=True), min_size=1, max_size=2 * _ISO_VECTOR_MIN))
def test_a_frame_the_bulk_path_declines_holds_what_it_cannot_take(values: list[dict[str, Any]]) -> None:
    raw = canon.pack(values)
    fast = memory_frame(raw, 0, 0, _IsoCache(), [])
    has_float = any(type(x) is float for v in values for x in v.get("meta", {}).values())
    assert (fast is None) == has_float
    if fast is not None:
        assert _text(_by_tier(fast[1])) == _text(_exact(raw)[1])


def _nfd_frame(n: int, at: int, where: str) -> bytes:
    """``n`` good memories, one of them (at ``at``) holding NFD text in ``where``."""
    bad = "e\u0301"
    assert not unicodedata.is_normalized("NFC", bad)
    values = [memory_value(f"fine é {i}", time=i * 7_777_777, tags=["t"], meta={"k": "v"}) for i in range(n)]
    if where == "text":
        values[at]["text"] = bad
    elif where == "tag":
        values[at]["tags"] = [bad]
    elif where == "meta key":
        values[at]["meta"] = {bad: 1}
    elif where == "meta value":
        values[at]["meta"] = {"k": bad}
    else:
        values[at]["source"] = bad
    return canon.pack(values)


@pytest.mark.parametrize("where", ["text", "tag", "meta key", "meta value", "source"])
@pytest.mark.parametrize("n", [1, _ISO_VECTOR_MIN - 1, _ISO_VECTOR_MIN, 300])
def test_a_frame_holding_one_non_nfc_string_is_refused_by_the_bulk_path(where: str, n: int) -> None:
    at = random.Random(n).randrange(n)
    assert memory_frame(_nfd_frame(n, at, where), 0, 0, _IsoCache(), []) is None
    with pytest.raises(DataError):  # and the exact way names the failure (5.1)
        _exact(_nfd_frame(n, at, where))


# --- the CLI: the library document, escaped, in commits large and small ----------------------

runner = CliRunner()


def _reference(cap: capsule.Capsule) -> bytes:
    doc = vouch_approvals(cap._store, fold(cap.records())).to_dict()
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _write(path: Path, frames: list[list[dict[str, Any]]]) -> None:
    with capsule.create(path) as cap:
        for values in frames:
            datas = [canon.pack(v) for v in values]
            write_commit(cap._store, [(record_id("memory", d), "memory", d) for d in datas])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(memories(), min_size=1, max_size=2 * _ISO_VECTOR_MIN), min_size=1, max_size=4))
def test_state_json_is_the_escaped_reference(tmp_path: Path, frames: list[list[dict[str, Any]]]) -> None:
    p = Path(tempfile.mkdtemp(dir=tmp_path)) / "r.capsule"  # one per example
    _write(p, frames)
    with capsule.open(p) as cap:
        want = _reference(cap)
        assert cap.state().to_json_bytes() == want
    res = runner.invoke(app, ["state", str(p), "--json"])
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes == escape_json(want) + b"\n"


@pytest.mark.parametrize("enabled", [True, False])
def test_state_leaves_the_collector_as_it_found_it(tmp_path: Path, enabled: bool) -> None:
    """The command pauses the cyclic collector; the test runner's process must get it back."""
    p = tmp_path / "a.capsule"
    _write(p, [[memory_value(f"m {i}", time=i) for i in range(40)]])
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        for args in (["state", str(p), "--json"], ["state", str(p)], ["state", str(tmp_path / "missing")]):
            runner.invoke(app, args)
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
