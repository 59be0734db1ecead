"""Deep verify in bulk (issue #14): ``capsule/verifier/fast.py`` against the reference walk.

The bulk path only accepts; whatever it doubts, the reference walk decides. So on every
file both paths must give the same report (verdict, counts, warnings, first error with
its offset, seq, check and message), and on every RECORDS payload the bulk check may
accept only what the reference accepts, with the same ids and kinds:

- good capsules of every shape (plain and unicode memories, flat and nested meta,
  embeddings, the other kinds, vindex and revert records, checkpoints): the same report,
  and the bulk path really takes the frames it is for (falling back everywhere would
  pass every other test and be useless);
- a table of bad records, one rule of 5, 7.0, 7.1 and 11 each, re-chained into a file
  with the fuzz forge (``tests/fuzz/forge.py``) so that the record checks are reached: both
  paths name the same failure, and the bulk check refuses the payload;
- random capsules with random single-byte corruptions of a RECORDS payload (re-chained)
  or of the file (not re-chained), and random forge recipes: the same report;
- hypothesis: random memories encoded by the reference, a byte changed or not: the bulk
  check accepts a payload only if the reference does, with the same ids.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import capsule
import capsule.state.kinds  # noqa: F401  (registers every record kind)
from capsule.core import constants as C
from capsule.core.errors import DataError, InvalidRecordError
from capsule.format import canonical as canon
from capsule.format.commit import decode_records_payload, encode_records_payload
from capsule.format.index import ENTRY_SIZE
from capsule.format.records import decode_record, memory_value, record_id
from capsule.verifier import fast
from tests.fuzz import forge
from tests.fuzz._common import Choices

T0 = 1_767_225_600 * 10**9
WORDS = ["deploy", "key", "rotates", "friday", "café", "naïve", "日本語", "Ελλάδα", "ﬁle", "e\u0301", "🙂", "x" * 40]
TAGS = ["ops", "infra", "Été", "z", "a", "b" * 256, "日本"]


def _memory(rnd: random.Random, i: int, *, dim: int = 0, nested: bool = False) -> dict[str, Any]:
    m: dict[str, Any] = {"text": f"{i}: " + " ".join(rnd.choices(WORDS, k=rnd.randint(0, 12))), "time": T0 + i}
    if rnd.random() < 0.7:
        m["tags"] = rnd.sample(TAGS, rnd.randint(0, 3))
    if rnd.random() < 0.7:
        m["meta"] = {rnd.choice(["src", "turn", "ok", "w", "ü", "nil", ""]): rnd.choice(
            ["chat", 7, -3, 2**63, True, None, 0.25, -1e300, "ẞ"]) for _ in range(rnd.randint(0, 3))}
        if nested and rnd.random() < 0.3:
            m["meta"]["deep"] = {"list": [1, 2.5, "x", b"\x00\x01"], "map": {"k": None}}
    if rnd.random() < 0.2:
        m["tier"] = rnd.choice(["scratch", "working", "validated"])
    if rnd.random() < 0.2:
        m["ttl"] = rnd.randint(1, 10**12)
    if rnd.random() < 0.2:
        m["source"] = rnd.choice(["", "slack", "ünï"])
    if dim and rnd.random() < 0.5:
        m["embedding"] = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return m


def _build(path: Path, seed: int, *, dim: int = 0, nested: bool = False, others: bool = False,
           revert: bool = False, actions: bool = False, commits: int = 3) -> Path:
    rnd = random.Random(seed)
    key = capsule.generate_key() if revert else None
    with capsule.create(path) as cap:
        if dim:
            cap.configure_vectors(dim=dim)
        for c in range(commits):
            with cap.commit() as tx:
                tx.put_many([_memory(rnd, 1000 * c + i, dim=dim, nested=nested) for i in range(rnd.randint(170, 200))])
                if others:
                    tx.decide(f"use plan {c}", rationale="it is cheaper")
                    tx.note(f"note {c} ü")
                    tx.constrain(f"never touch prod on day {c}")
            if revert and c == 0:
                cap.checkpoint("first", key=key)
            if actions:
                cap.run_once(f"job-{c}", lambda c=c: {"n": c})  # 7.8: intent and result, their own commits
        if revert:
            cap.rollback("first", key=key)
    return path


SHAPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "nested-meta": {"nested": True},
    "vectors": {"dim": 8},
    "other-kinds": {"others": True},
    "revert": {"revert": True, "others": True},
    "actions": {"actions": True, "nested": True},
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("seeds")
    return {name: _build(d / f"{name}.capsule", k, **kw).read_bytes() for k, (name, kw) in enumerate(SHAPES.items())}


def _report(path: Path, *, bulk: bool, **kw: Any) -> dict[str, Any]:
    old = fast.BULK
    fast.BULK = bulk
    try:
        return capsule.verify(path, **kw).to_dict()
    finally:
        fast.BULK = old


def _both(path: Path, **kw: Any) -> dict[str, Any]:
    """The report of the bulk path, asserted equal to the reference walk's."""
    got, want = _report(path, bulk=True, **kw), _report(path, bulk=False, **kw)
    assert got == want
    return got


def reference_frame(raw: bytes) -> list[tuple[str, bytes]] | None:
    """(kind, id) of each record of a RECORDS payload as the reference walk checks it, or
    None when it refuses the payload (check._walk's loop, without the walk's tallies)."""
    try:
        out = []
        for value, data in decode_records_payload(raw, 0, 0):
            kind = value.get("kind") if isinstance(value, dict) else None
            if not isinstance(kind, str):
                return None
            rid = record_id(kind, data)
            decode_record(value, rid)
            out.append((kind, rid))
        return out
    except DataError:
        return None


def _assert_refines(raw: bytes) -> fast.Frame | None:
    """The bulk check accepts ``raw`` only if the reference does, with its ids and kinds."""
    got = fast.check_frame(raw)
    if got is not None:
        want = reference_frame(raw)
        assert want is not None, "the bulk path accepted a payload the reference refuses"
        assert got.ids == b"".join(r for _, r in want)
        assert (got.kinds or ["memory"] * len(got)) == [k for k, _ in want]
    return got


def _records_frames(data: bytes) -> Iterator[forge.Frame]:
    return (f for f in forge.split(data).frames if f.ftype == C.FT_RECORDS)


# --- good capsules ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_good_capsules_same_report(seeds: dict[str, bytes], shape: str, tmp_path: Path) -> None:
    p = tmp_path / "c.capsule"
    p.write_bytes(seeds[shape])
    rep = _both(p)
    assert rep["ok"], rep["first_error"]
    assert _both(p, deep=False)["ok"]


def test_bulk_path_takes_the_frames_it_is_for(seeds: dict[str, bytes]) -> None:
    """Plain memory frames in one pass; nested meta and other kinds record by record; only
    frames holding a record the walk acts on (vindex, revert) go to the reference."""
    taken: dict[str, list[bool]] = {}
    for shape, data in seeds.items():
        for f in _records_frames(data):
            got = _assert_refines(f.raw)
            kinds = {k for k, _ in reference_frame(f.raw) or []}
            taken.setdefault(shape, []).append(got is not None)
            assert (got is None) == bool(kinds & fast.WALK_KINDS), (shape, kinds)
            if got is not None and kinds == {"memory"} and shape == "plain":
                assert got.kinds is None  # the whole-frame path
    assert all(taken["plain"]) and all(taken["nested-meta"]) and all(taken["other-kinds"]) and all(taken["actions"])
    assert any(taken["vectors"]) and not all(taken["vectors"])  # the frame with the vindex record
    assert not all(taken["revert"])


def test_bulk_path_frame_of_embeddings(tmp_path: Path) -> None:
    """The vector tallies of a bulk frame are those of the reference (16.1, 16.3)."""
    p = tmp_path / "v.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(dim=4)
        with cap.commit() as tx:
            tx.remember("first")
        with cap.commit() as tx:
            tx.put_many([{"text": f"m{i}", "embedding": [i + 1.0, 0.5, -2.0, 1e-3]} if i % 3 == 0 else {"text": f"m{i}"}
                         for i in range(30)])
        cap.build_index()
    frames = list(_records_frames(p.read_bytes()))
    got = fast.check_frame(frames[-1].raw)
    assert got is not None and [s for s, _ in got.vectors] == list(range(0, 30, 3))
    assert {d for _, d in got.vectors} == {4}
    assert _both(p)["ok"]


# --- bad records, one rule each -------------------------------------------------------------------


def _edit_first_record(data: bytes, edit: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    """``data`` with the first record of its last plain RECORDS frame replaced by
    ``edit(record bytes)``, re-chained; and the new payload."""
    cap = forge.split(data)
    f = [f for f in cap.frames if f.ftype == C.FT_RECORDS and fast.check_frame(f.raw) is not None][-1]
    parts = canon.split_array(f.raw)
    parts[0] = edit(parts[0])
    f.raw = encode_records_payload(parts)
    return forge.build(cap), f.raw


def _value_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def edit(rec: bytes) -> bytes:
        v = msgpack.unpackb(rec, raw=False)
        change(v)
        return msgpack.packb(v, use_bin_type=True)  # key order as left by change()

    return edit


def _sorted_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def edit(rec: bytes) -> bytes:
        v = msgpack.unpackb(rec, raw=False)
        change(v)
        return canon.pack(dict(sorted(v.items())))

    return edit


def _nest(levels: int) -> Any:
    v: Any = 1
    for _ in range(levels):
        v = [v]
    return v


def _reverse(v: dict[str, Any]) -> None:
    items = list(v.items())
    v.clear()
    v.update(reversed(items))


def _set(**kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda v: v.update(kw)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda v: v.pop(key, None)


def _emb(data: bytes, dtype: str = "f32", shape: Any = None) -> dict[str, Any]:
    return {"data": data, "dtype": dtype, "shape": [len(data) // 4] if shape is None else shape}


def _long_time(rec: bytes) -> bytes:
    """``time`` as uint64 when it fits a shorter form: not the shortest int (5.1)."""
    v = msgpack.unpackb(rec, raw=False)
    v["time"] = 5
    head = canon.pack(dict(sorted(v.items())))
    return head.replace(b"\xa4time\x05", b"\xa4time\xcf" + (5).to_bytes(8, "big"), 1)


def _str8(rec: bytes) -> bytes:
    v = msgpack.unpackb(rec, raw=False)
    v["text"] = "short"
    return canon.pack(dict(sorted(v.items()))).replace(b"\xa5short", b"\xd9\x05short", 1)


def _meta_float32(rec: bytes) -> bytes:
    v = msgpack.unpackb(rec, raw=False)
    v["meta"] = {"a": 1.5}
    return canon.pack(dict(sorted(v.items()))).replace(b"\xcb" + np.float64(1.5).tobytes()[::-1],
                                                        b"\xca" + np.float32(1.5).tobytes()[::-1], 1)


def _meta_ext(rec: bytes) -> bytes:
    v = msgpack.unpackb(rec, raw=False)
    v["meta"] = {"a": msgpack.ExtType(1, b"x")}
    return msgpack.packb(dict(sorted(v.items())), use_bin_type=True)


def _dup_key(rec: bytes) -> bytes:
    """``kind`` twice: the map header counts one entry more (5.1: keys unique)."""
    v = msgpack.unpackb(rec, raw=False)
    body = canon.pack(dict(sorted(v.items())))
    assert 0x80 <= body[0] <= 0x8E
    return bytes([body[0] + 1]) + body[1:] + b"\xa4kind\xa6memory"


_F = np.array([1.0, 2.0], "<f4")
BAD: dict[str, Callable[[bytes], bytes]] = {
    # 7.0 / 7.1 schema
    "time negative": _sorted_edit(_set(time=-1)),
    "time 2^63": _sorted_edit(_set(time=2**63)),
    "time float": _sorted_edit(_set(time=1.5)),
    "time missing": _sorted_edit(_drop("time")),
    "no kind": _sorted_edit(_drop("kind")),
    "kind not text": _sorted_edit(_set(kind=7)),
    "no text": _sorted_edit(_drop("text")),
    "text bytes": _sorted_edit(_set(text=b"abc")),
    "unknown field": _sorted_edit(_set(colour="red")),
    "tier spelled out": _sorted_edit(_set(tier="working")),
    "tier unknown": _sorted_edit(_set(tier="gold")),
    "tags empty": _sorted_edit(_set(tags=[])),
    "tags unsorted": _sorted_edit(_set(tags=["b", "a"])),
    "tags duplicate": _sorted_edit(_set(tags=["a", "a"])),
    "tag empty": _sorted_edit(_set(tags=["", "a"])),
    "tag 257": _sorted_edit(_set(tags=["x" * 257])),
    "tag not text": _sorted_edit(_set(tags=[1])),
    "tags a map": _sorted_edit(_set(tags={"a": 1})),
    "meta empty": _sorted_edit(_set(meta={})),
    "meta nil": _sorted_edit(_set(meta=None)),
    "meta keys unsorted": _sorted_edit(_set(meta={"b": 1, "a": 2})),
    "meta key not NFC": _sorted_edit(_set(meta={"e\u0301": 1})),
    "meta -0.0": _sorted_edit(_set(meta={"a": -0.0})),
    "meta nan": _sorted_edit(_set(meta={"a": float("nan")})),
    "meta inf": _sorted_edit(_set(meta={"a": float("inf")})),
    "meta too deep": _sorted_edit(_set(meta={"a": _nest(32)})),
    "ttl zero": _sorted_edit(_set(ttl=0)),
    "ttl nil": _sorted_edit(_set(ttl=None)),
    "ttl 2^63": _sorted_edit(_set(ttl=2**63)),
    "source nil": _sorted_edit(_set(source=None)),
    "source not NFC": _sorted_edit(_set(source="e\u0301")),
    "text not NFC": _sorted_edit(_set(text="cafe\u0301")),
    "embedding nil": _sorted_edit(_set(embedding=None)),
    "embedding list": _sorted_edit(_set(embedding=[1.0, 2.0])),
    "embedding f16": _sorted_edit(_set(embedding=_emb(_F.tobytes(), "f16"))),
    "embedding short": _sorted_edit(_set(embedding=_emb(_F.tobytes(), shape=[3]))),
    "embedding shape 0": _sorted_edit(_set(embedding=_emb(b"", shape=[0]))),
    "embedding shape 2-d": _sorted_edit(_set(embedding=_emb(_F.tobytes(), shape=[1, 2]))),
    "embedding nan": _sorted_edit(_set(embedding=_emb(np.array([1.0, np.nan], "<f4").tobytes()))),
    "embedding inf": _sorted_edit(_set(embedding=_emb(np.array([np.inf, 1.0], "<f4").tobytes()))),
    "embedding -0.0": _sorted_edit(_set(embedding=_emb(np.array([-0.0, 1.0], "<f4").tobytes()))),
    "embedding extra key": _sorted_edit(_set(embedding={**_emb(_F.tobytes()), "x": 1})),
    # 5.1 / 5.2 canonical form
    "keys unsorted": _value_edit(_reverse),
}


BAD.update({"long int form": _long_time, "str8 for fixstr": _str8, "meta float32": _meta_float32,
            "meta ext": _meta_ext, "duplicate key": _dup_key,
            "float32 time": lambda rec: _long_time(rec).replace(b"\xa4time\xcf" + (5).to_bytes(8, "big"),
                                                                b"\xa4time\xca" + np.float32(5).tobytes()[::-1], 1),
            "trailing byte": lambda rec: rec + b"\xc0", "not a map": lambda rec: b"\x93\x01\x02\x03",
            "truncated": lambda rec: rec[:-1], "nil": lambda rec: b"\xc0"})


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_same_failure(seeds: dict[str, bytes], case: str, tmp_path: Path) -> None:
    data, raw = _edit_first_record(seeds["vectors" if "embedding" in case else "plain"], BAD[case])
    assert reference_frame(raw) is None, "the case must break a rule"
    assert fast.check_frame(raw) is None
    p = tmp_path / "bad.capsule"
    p.write_bytes(data)
    rep = _both(p)
    assert not rep["ok"] and rep["first_error"]["check"] in ("record", "record-schema", "canonical", "records")


def test_duplicate_record_same_failure(seeds: dict[str, bytes], tmp_path: Path) -> None:
    """A record stored twice (7.0) is found by id after the walk; both paths name the second copy."""
    p = tmp_path / "dup.capsule"
    p.write_bytes(seeds["plain"])
    with capsule.open(p, "a") as c, c.commit() as tx:  # after the last INDEX: no table lists the copy
        tx.remember("one more")
    cap = forge.split(p.read_bytes())
    frames = [f for f in cap.frames if f.ftype == C.FT_RECORDS]
    first = canon.split_array(frames[0].raw)[3]
    frames[-1].raw = encode_records_payload([*canon.split_array(frames[-1].raw), first])
    p.write_bytes(forge.build(cap))
    rep = _both(p)
    assert rep["first_error"]["check"] == "duplicate-record", rep


def _plain(i: int, **kw: Any) -> bytes:
    return canon.pack(memory_value(f"memory {i}", time=T0 + i, **kw))


def _decision() -> bytes:
    return canon.pack({"kind": "decision", "summary": "use the cheaper plan", "time": T0})


PAYLOADS: dict[str, bytes] = {
    "array16 for 2 memories": b"\xdc\x00\x02" + _plain(1) + _plain(2),
    "array16 for a mixed frame": b"\xdc\x00\x02" + _decision() + _plain(2),
    "empty array": b"\x90",
    "a map": canon.pack({"kind": "memory"}),
    "meta over 100,000 entries": encode_records_payload(
        [canon.pack({"kind": "memory", "meta": {f"{i:06}": None for i in range(C.MAX_MAP + 1)}, "text": "",
                     "time": 0})]),
    "record after the last": encode_records_payload([_plain(1)]) + _plain(2),
}


@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_bad_payload_refused(case: str) -> None:
    """Rules of the payload around the records (5.1 header forms, 7.0, 11 entry limits)."""
    raw = PAYLOADS[case]
    assert reference_frame(raw) is None
    assert fast.check_frame(raw) is None


def test_payload_over_the_uncounted_size_goes_to_the_reference() -> None:
    """11: a payload that may hold more objects than the record cap is counted by the
    reference; the bulk path does not take it, even when it is good."""
    raw = encode_records_payload([_plain(i, meta={"pad": "x" * 60_000}) for i in range(20)])
    assert len(raw) > C.MAX_RECORD_OBJECTS
    assert reference_frame(raw) is not None and fast.check_frame(raw) is None
    mid = encode_records_payload([_plain(i, meta={"pad": "x" * 60_000}) for i in range(3)])
    assert fast.check_frame(mid) is not None  # a long record under 200 KB is fine


def _edit_last_table(data: bytes, edit: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> bytes:
    """``data`` with the columns of its last TABLE frame edited in place (9.1 layout: prefixes,
    ids, frames, slots), the INDEX re-pointed at the new hash and everything re-chained."""
    cap = forge.split(data)
    f = [f for f in cap.frames if f.ftype == C.FT_TABLE][-1]
    n = len(f.raw) // ENTRY_SIZE
    buf = bytearray(f.raw)
    ids = np.frombuffer(buf, "S32", n, 8 * n)
    frames = np.frombuffer(buf, "<u8", n, 40 * n)
    slots = np.frombuffer(buf, "<u4", n, 48 * n)
    edit(ids, frames, slots)
    f.raw = bytes(buf)
    return forge.build(cap, forge.SKIP_TABLE)


def _swap_slots(ids: np.ndarray, frames: np.ndarray, slots: np.ndarray) -> None:
    slots[[0, 1]] = slots[[1, 0]]


def _next_frame(ids: np.ndarray, frames: np.ndarray, slots: np.ndarray) -> None:
    frames[-1] += 1


def _repeat_row(ids: np.ndarray, frames: np.ndarray, slots: np.ndarray) -> None:
    """Row 1 becomes a copy of row 0: one record listed twice, another not at all."""
    ids[1], frames[1], slots[1] = ids[0], frames[0], slots[0]


def _other_id(ids: np.ndarray, frames: np.ndarray, slots: np.ndarray) -> None:
    """Row 0 names an id no record has, in its place (the order and prefix still hold)."""
    ids.view(np.uint8).reshape(-1, 32)[0, 31] ^= 1


@pytest.mark.parametrize("edit", [_swap_slots, _next_frame, _repeat_row, _other_id, lambda *cols: None],
                         ids=["swap-slots", "next-frame", "repeat-row", "other-id", "none"])
def test_index_tables_same_verdict(seeds: dict[str, bytes], edit: Any, tmp_path: Path) -> None:
    """13.3: the tables of the INDEX in force list exactly the committed records at their
    places; the NumPy comparison (fast.tables_list) agrees with the walk's own."""
    p = tmp_path / "t.capsule"
    p.write_bytes(_edit_last_table(seeds["plain"], edit))
    rep = _both(p)
    if edit.__name__ == "<lambda>":
        assert rep["ok"], rep
    else:
        assert rep["first_error"]["check"] == "index-table", rep


# --- random corruptions ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_random_payload_bytes_same_report(seeds: dict[str, bytes], shape: str, tmp_path: Path) -> None:
    """One byte of one decompressed RECORDS payload changed, the file re-chained (so the
    record checks are what meets it): both paths give the same report."""
    rnd = random.Random(f"payload-{shape}")
    p = tmp_path / "m.capsule"
    failures = 0
    for _ in range(40):
        cap = forge.split(seeds[shape])
        frames = [f for f in cap.frames if f.ftype == C.FT_RECORDS]
        f = rnd.choice(frames)
        i = rnd.randrange(len(f.raw))
        b = rnd.choice([f.raw[i] ^ (1 << rnd.randrange(8)), rnd.randrange(256), 0xC1, 0xCB, 0xDC, 0x80])
        f.raw = f.raw[:i] + bytes([b]) + f.raw[i + 1 :]
        _assert_refines(f.raw)
        p.write_bytes(forge.build(cap))
        failures += not _both(p)["ok"]
    assert failures  # the corruptions reached the checks


@pytest.mark.parametrize("shape", ["plain", "vectors", "other-kinds"])
def test_random_file_bytes_same_report(seeds: dict[str, bytes], shape: str, tmp_path: Path) -> None:
    """One byte of the file changed, nothing re-chained: the same report (mostly a CRC or
    chain failure, or a torn tail in the last commit)."""
    rnd = random.Random(f"file-{shape}")
    data = seeds[shape]
    p = tmp_path / "m.capsule"
    for _ in range(40):
        i = rnd.randrange(C.HEADER_SIZE, len(data))
        p.write_bytes(data[:i] + bytes([data[i] ^ (1 << rnd.randrange(8))]) + data[i + 1 :])
        _both(p)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_random_forge_recipes_same_report(seeds: dict[str, bytes], shape: str, tmp_path: Path) -> None:
    """The open/verify fuzz target's structure-aware mutations: the same report."""
    rnd = random.Random(f"forge-{shape}")
    p = tmp_path / "m.capsule"
    for _ in range(40):
        p.write_bytes(forge.mutate(seeds[shape], Choices(rnd.randbytes(48))))
        _both(p)


# --- hypothesis: one payload, random records, a byte changed or not ---------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=20)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False,
                    allow_infinity=False), _text)
_memories = st.lists(st.fixed_dictionaries(
    {"text": _text, "time": st.integers(0, 2**63 - 1)},
    optional={"tags": st.lists(_text.filter(lambda s: 0 < len(s) <= 256), max_size=4),
              "meta": st.dictionaries(_text, _scalar, max_size=4), "tier": st.sampled_from(["scratch", "validated"]),
              "ttl": st.integers(1, 2**63 - 1), "source": _text,
              "embedding": st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1,
                                        max_size=6)}), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mems=_memories, flip=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.integers(0, 255))))
def test_bulk_accepts_only_what_the_reference_accepts(mems: list[dict[str, Any]],
                                                      flip: tuple[int, int] | None) -> None:
    try:
        recs = [canon.pack(memory_value(m["text"], **{k: v for k, v in m.items() if k != "text"})) for m in mems]
    except InvalidRecordError:
        assume(False)  # two meta keys equal after NFC
    raw = encode_records_payload(recs)
    if flip is not None:
        i = flip[0] % len(raw)
        raw = raw[:i] + bytes([flip[1]]) + raw[i + 1 :]
    got = _assert_refines(raw)
    if flip is None or raw == encode_records_payload(recs):
        assert got is not None  # a good frame of plain memories takes the bulk path
