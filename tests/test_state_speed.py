"""``capsule state --json`` takes the fast path and prints the same bytes (spec 13.2, 5.2).

What is promised:

* the document is byte for byte what the reference path gives: every record
  decoded to an object, folded (``fold(records())``), the dict dumped with
  ``json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"))``
  and bin values as hex; on a capsule with every kind of record, every field
  of a memory, floats of every spelling and bin values in user maps, a
  rollback and a restore, views, and unknown kinds;
* the fast path builds no record object per memory, and refuses what the
  reference reader refuses, with the same error;
* ``canonical.decode_bulk`` accepts exactly what ``decode`` accepts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from capsule_cli._render import json_text
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.core.errors import DataError, NonCanonicalError
from capsule.format import canonical as canon
from capsule.format.records import Memory, record_id
from capsule.format.writer import write_commit
from capsule.state.checkpoints import vouch_approvals
from capsule.state.fold import fold

runner = CliRunner()
T0 = 1_700_000_000 * 10**9


def ticking() -> Callable[[], int]:
    t = [T0]

    def clock() -> int:
        t[0] += 1_234_567  # fractions of a second, and seconds that change
        return t[0]

    return clock


def reference(cap: capsule.Capsule) -> bytes:
    """The document as the first wave wrote it: objects, fold, json.dumps."""
    def hexed(v: object) -> str:
        if isinstance(v, bytes):
            return v.hex()
        raise TypeError(type(v).__name__)

    doc = vouch_approvals(cap._store, fold(cap.records())).to_dict()  # as Capsule.state() does (7.4)
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=hexed).encode()


FLOATS = [0.1, 1e-07, 1e16, 1e22, 1.5e300, 5e-324, 123456789.125, -2.5, 1e-05, 0.0001, 1.0, 0.0]


def varied(path: Path) -> None:
    rnd = random.Random(5)
    k1, k2 = capsule.generate_key(), capsule.generate_key()
    words = ["alpha", "naïve", "日本語", "emoji😀", 'quote"', "back\\slash", "tab\there", "nl\nx", "\x00nul",
             "e\u0301", "\u2028sep", "<\u0338"]
    with capsule.create(path, clock=ticking()) as cap:
        with cap.commit() as tx:
            tx.set_identity("agent-1", name="n", model="m", keys=[k1.public_key],
                            config={"temp": 0.7, "raw": b"\x00\xff", "deep": {"x": [1e-9, None, True]}})
        cap.checkpoint("c0", key=k1)
        cap.run_once("email:1", lambda: {"id": 1.5})
        cap.tasks.add("t1", payload={"w": 0.5})
        for c in range(6):
            with cap.commit() as tx:
                for i in range(300):
                    j = c * 1000 + i
                    text = " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 12))) + f" #{j}"
                    kw: dict[str, Any] = {"time": T0 + j * 999_999_937 + (i % 3) * 10**9}
                    if j % 2:
                        kw["tags"] = rnd.sample(words[:4] + ["t" * 256], rnd.randint(1, 3))
                    if j % 3 == 0:
                        kw["meta"] = {"f": FLOATS[j % len(FLOATS)], "n": -j, "big": 2**64 - 1, "b": b"\x01\x02",
                                      "l": [1, 2.5, "x", {"z": [None, False]}], "s": words[j % len(words)]}
                    elif j % 3 == 1:
                        kw["meta"] = {"src": "plain", "turn": j}
                    if j % 7 == 0:
                        kw["embedding"] = [rnd.uniform(-1, 1) for _ in range(8)]
                    if j % 5 == 0:
                        kw["ttl"] = 10**12 + j
                    if j % 11 == 0:
                        kw["source"] = "src/" + words[j % len(words)]
                    tx.remember(text, tier=("scratch", "working", "validated")[j % 3], **kw)
                did = tx.decide(f"decision {c}", rationale="because", evidence=[], inputs={"p": 0.25, "q": 1e-12,
                                                                                           "b": b"\xaa"},
                                alternatives=["a", "b"])
                cid = tx.constrain(f"rule {c}", scope=f"s{c % 2}")
                tx.approve(cid, k1)
                tx.approve(did, k2)  # k2 is on no identity: not verified
                tx.note(f"note {c} {words[c]}")
                if c == 3:
                    tx.constrain("rule 0", scope="s0", status="revoked")
            if c == 1:
                cap.checkpoint("c1", key=k1)
        cap.rollback("c1", key=k1)  # drops the records after c1
        with cap.commit() as tx:  # and one of them comes back: a restore
            tx.remember("restored?", time=T0)
        # a kind this reader does not know (12.3): counted, not shown
        data = canon.pack({"kind": "mystery", "time": T0, "x": 1.5})
        write_commit(cap._store, [(record_id("mystery", data), "mystery", data)])


@pytest.fixture(scope="module")
def capsule_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("state") / "varied.capsule"
    varied(p)
    return p


def test_the_document_is_byte_identical_to_the_reference(capsule_path: Path) -> None:
    with capsule.open(capsule_path) as cap:
        want = reference(cap)
        st = cap.state()
        assert st.to_json_bytes() == want
        assert st.to_json() == want.decode()
        assert st == vouch_approvals(cap._store, fold(cap.records()))
        doc = json.loads(want)
        # the fixture covers what it claims to
        assert doc["other_kinds"] == {"action": 2, "mystery": 1, "task": 1}
        assert doc["identity"]["config"]["temp"] == 0.7 and doc["constraints"]
        assert any(m.get("embedding_dim") for m in doc["memories"]["working"])
        for label in ("c0", "c1"):
            with cap.view(label) as v:
                assert v.state().to_json_bytes() == reference(v)
    res = runner.invoke(app, ["state", str(capsule_path), "--json"])
    assert res.exit_code == 0, res.output
    # the CLI's --json path: the same document, with the escapes every --json output gets
    with capsule.open(capsule_path) as cap:
        doc = vouch_approvals(cap._store, fold(cap.records())).to_dict()
    assert res.stdout_bytes == json_text(doc, compact=True).encode() + b"\n"


def test_the_fast_path_makes_no_record_object_per_memory(capsule_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real = Memory.from_value.__func__  # type: ignore[attr-defined]

    def counting(cls: type, v: Any, rid: str = "") -> Any:
        made.append(1)
        return real(cls, v, rid)

    monkeypatch.setattr(Memory, "from_value", classmethod(counting))
    with capsule.open(capsule_path) as cap:
        st = cap.state()
    assert sum(len(m) for m in st.memories.values()) > 500
    assert made == []


# --- the fast path refuses what the reference reader refuses -----------------------------

BAD_MEMORIES = [
    {"kind": "memory", "text": "x", "time": 1, "tier": "working"},  # a default spelled out
    {"kind": "memory", "text": "x", "time": 1, "tags": ["b", "a"]},  # unsorted
    {"kind": "memory", "text": "x", "time": 1, "tags": ["a", "a"]},  # twice
    {"kind": "memory", "text": "x", "time": 1, "tags": []},  # empty, present
    {"kind": "memory", "tags": [""], "text": "x", "time": 1},
    {"kind": "memory", "tags": ["t" * 257], "text": "x", "time": 1},
    {"kind": "memory", "tags": [1], "text": "x", "time": 1},
    {"kind": "memory", "meta": {}, "text": "x", "time": 1},
    {"kind": "memory", "meta": None, "text": "x", "time": 1},
    {"kind": "memory", "text": "x", "time": 1, "ttl": None},
    {"kind": "memory", "text": "x", "time": 1, "ttl": 0},
    {"kind": "memory", "source": None, "text": "x", "time": 1},
    {"kind": "memory", "text": "x", "tier": "gold", "time": 1},
    {"kind": "memory", "text": "x", "time": -1},
    {"kind": "memory", "text": "x", "time": 1 << 63},
    {"kind": "memory", "text": 5, "time": 1},
    {"kind": "memory", "time": 1},
    {"kind": "memory", "odd": 1, "text": "x", "time": 1},
    {"embedding": {"data": b"\x00\x00\x00\x80", "dtype": "f32", "shape": [1]}, "kind": "memory", "text": "x",
     "time": 1},  # -0.0
    {"embedding": {"data": b"\x00\x00\xc0\x7f", "dtype": "f32", "shape": [1]}, "kind": "memory", "text": "x",
     "time": 1},  # NaN
    {"embedding": {"data": b"\x00\x00\x80\x3f", "dtype": "f32", "shape": [2]}, "kind": "memory", "text": "x",
     "time": 1},  # shape and data disagree
]


@pytest.mark.parametrize("value", BAD_MEMORIES, ids=range(len(BAD_MEMORIES)))
def test_a_bad_memory_fails_the_same_way(tmp_path: Path, value: dict[str, Any]) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("fine")
        data = canon.pack(value)
        write_commit(cap._store, [(record_id("memory", data), "memory", data)])
    with capsule.open(p) as cap:
        with pytest.raises(DataError) as slow:
            fold(cap.records())
        with pytest.raises(DataError) as fast:
            cap.state()
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)


# --- decode_bulk is decode -------------------------------------------------------------------


def _nfd_key() -> bytes:
    return b"\x91\x81\xa3e\xcc\x81\x01"  # [{"é" decomposed: e + U+0301: 1}]


BAD_PAYLOADS = {
    "keys out of order": msgpack.packb([{"b": 1, "a": 2}]),
    "duplicate key": b"\x91\x82\xa1a\x01\xa1a\x02",
    "bin key": b"\x91\x81\xc4\x01a\x01",
    "non-NFC value": msgpack.packb(["e\u0301"]),
    "non-NFC key": _nfd_key(),
    "-0.0": msgpack.packb([-0.0]),
    "NaN": msgpack.packb([float("nan")]),
    "infinity": msgpack.packb([{"x": float("-inf")}]),
    "float32": b"\x91\xca\x3f\x80\x00\x00",
    "long int form": b"\x91\xcd\x00\x01",
    "str8 for fixstr": b"\x91\xd9\x01a",
    "trailing bytes": msgpack.packb([1]) + b"\x00",
    "ext type": b"\x91\xd4\x01\x00",
    "truncated": msgpack.packb(["abc"])[:-1],
}


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_decode_bulk_refuses_what_decode_refuses(name: str) -> None:
    raw = BAD_PAYLOADS[name]
    with pytest.raises(NonCanonicalError) as slow:
        canon.decode(raw, max_objects=None)
    with pytest.raises(NonCanonicalError) as fast:
        canon.decode_bulk(raw)
    assert str(fast.value) == str(slow.value)


def test_decode_bulk_accepts_what_decode_accepts() -> None:
    rnd = random.Random(3)
    texts = ["", "a", "é", "e\u0301x"[:1], "日本", "\U0001f600", "\x00", "\u2028", "n\u0303"[:1], "ñ", "<", "≮"]

    def value(depth: int) -> Any:
        r = rnd.random()
        if depth > 3 or r < 0.5:
            return rnd.choice([None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, 1e-300, rnd.choice(texts),
                               bytes(rnd.randrange(256) for _ in range(rnd.randrange(5))), "x" * 40])
        if r < 0.75:
            return [value(depth + 1) for _ in range(rnd.randrange(4))]
        return {k: value(depth + 1) for k in sorted({rnd.choice(texts) + rnd.choice("abc") for _ in range(3)})}

    for _ in range(500):
        v = canon.normalize([value(0) for _ in range(rnd.randrange(1, 6))])
        raw = canon.encode(v)
        assert canon.decode_bulk(raw) == canon.decode(raw) == v


def test_the_incremental_state_root_equals_the_root_from_scratch() -> None:
    """RootCache inserts new ids into their bucket by binary search (13.1): the root after
    each batch is the root of the whole set, with many ids per bucket and ids landing at
    either end of one."""
    import numpy as np

    from capsule.state.stateroot import RootCache, state_root_of

    rnd = random.Random(11)
    ids = [bytes(rnd.randrange(256) for _ in range(32)) for _ in range(30_000)]
    ids += [b"\x00" * 32, b"\xff" * 32, b"\x00\x0f" + b"\xff" * 30, b"\xff\xf0" + b"\x00" * 30]
    rc = RootCache(np.sort(np.array(ids[:10_000], dtype="S32")))
    at = 10_000
    for n in (1, 2, 7, 500, 9_000, 10_000, 4):
        rc.add(ids[at : at + n])
        at += n
        assert rc.root() == state_root_of(ids[:at])
    root, probe = rc.root_with(ids[at:])
    assert root == state_root_of(ids) == probe.root()
    assert rc.root() == state_root_of(ids[:at])  # the probe left the cache as it was


def test_a_checkpoint_loop_reads_no_checkpoint_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that checkpoints every step re-read and re-parsed the previous CHECKPOINT,
    the KEYSET and the one it had just written at each step (14.9); now it remembers what
    it wrote and checked, and what it returns is what the file holds."""
    from capsule.format.checkpoint import parse_checkpoint
    from capsule.format.scan import read_frame_at
    from capsule.format.store import Store

    p = tmp_path / "a.capsule"
    k = capsule.generate_key()
    reads: list[int] = []
    real = Store.read_checkpoint

    def counted(self: Store, off: int) -> Any:
        reads.append(off)
        return real(self, off)

    with capsule.create(p, clock=ticking()) as cap:
        cap.checkpoint("c0", key=k)
        monkeypatch.setattr(Store, "read_checkpoint", counted)
        for i in range(1, 6):
            with cap.commit() as tx:
                tx.remember(f"step {i}")
            f = cap.checkpoint(f"c{i}", key=k, runtime_state=b"rt" if i == 3 else None)
            fh, payload, _, _ = read_frame_at(cap._h, f.offset, max_frame=cap._snap.header.max_frame_len)
            assert parse_checkpoint(payload, f.offset, fh.seq) == f
        assert reads == []
        assert [c.body.label for c in cap.checkpoints()] == [f"c{i}" for i in range(6)]
    with capsule.open(p) as cap:
        c3 = cap.find_checkpoint("c3")
        assert c3 is not None and c3.runtime == b"rt"


# --- frames of plain memories: typed structs, checked in C (state/memframe.py) -----------------


def plain(path: Path) -> None:
    """Commits of memories only, of every shape the typed path takes (every optional field,
    every tier, text needing escapes, the extremes of each int), one frame with a float in
    meta (the exact way), and a rollback and a restore (so liveness waits for the reverts)."""
    rnd = random.Random(9)
    k = capsule.generate_key()
    words = ["alpha", "naïve", "日本語", "emoji😀", 'quote"', "back\\slash", "tab\there", "\x00nul", "\u2028",
             "é", "<\u2260", "\x7f\x9f"]

    def text(j: int) -> str:
        return " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 12))) + f" #{j}"

    with capsule.create(path, clock=ticking()) as cap:
        with cap.commit() as tx:  # only the default fields: the one-pass case
            tx.put_many([{"text": text(j), "time": T0 + j * 999_999_937} for j in range(200)])
        with cap.commit() as tx:  # every field
            recs: list[dict[str, Any]] = []
            for j in range(200, 500):
                r: dict[str, Any] = {"text": text(j), "time": T0 + j * 10**9 if j % 4 else (1 << 63) - 1 - j,
                                     "tier": ("scratch", "working", "validated")[j % 3]}
                if j % 2:
                    r["tags"] = rnd.sample(words + ["t" * 256, "é" * 256], rnd.randint(1, 4))
                if j % 3:
                    r["meta"] = {"s": rnd.choice(words), "n": -j, "big": 2**64 - 1, "min": -(2**63), "ok": j % 2 == 0,
                                 "none": None, words[j % len(words)]: j}
                if j % 7 == 0:
                    r["embedding"] = [rnd.uniform(-1, 1) for _ in range(8)]
                if j % 5 == 0:
                    r["ttl"] = 1 if j % 10 else (1 << 63) - 1
                if j % 11 == 0:
                    r["source"] = "src/" + rnd.choice(words)
                recs.append(r)
            tx.put_many(recs)
        cap.checkpoint("c0", key=k)
        with cap.commit() as tx:  # a float in meta: the exact way
            for j in range(500, 520):
                tx.remember(text(j), meta={"f": 0.1 * j, "l": [1, "x"]}, time=T0 + j)
        with cap.commit() as tx:
            tx.put_many([{"text": text(j), "tier": "scratch", "tags": ["late"]} for j in range(520, 560)])
        cap.rollback("c0")
        with cap.commit() as tx:  # a restore of a rolled-back record, and a new one
            tx.put_many([{"text": "fresh", "tier": "validated"}])


@pytest.fixture(scope="module")
def plain_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("state") / "plain.capsule"
    plain(p)
    return p


def test_frames_of_plain_memories_give_the_same_document(plain_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.format.commit import decode_records_payload as real

    exact: list[int] = []

    def counted(raw: bytes, offset: int, seq: int) -> Any:
        exact.append(offset)
        return real(raw, offset, seq)

    monkeypatch.setattr("capsule.state.fold.decode_records_payload", counted)
    with capsule.open(plain_path) as cap:
        want = reference(cap)
        exact.clear()
        st = cap.state()
        assert st.to_json_bytes() == want
        assert st == vouch_approvals(cap._store, fold(cap.records()))
        assert len(exact) == 2  # the float frame and the revert; every other frame the typed way
        with cap.view("c0") as v:
            assert v.state().to_json_bytes() == reference(v)
    doc = json.loads(want)
    mems = [m for tier in doc["memories"].values() for m in tier]
    assert {len(doc["memories"][t]) for t in doc["memories"]} != {0}
    assert any("embedding_dim" in m for m in mems) and any("ttl" in m for m in mems)
    assert any("source" in m for m in mems) and any(m["meta"].get("big") == 2**64 - 1 for m in mems)
    assert not any("late" in m["tags"] for m in mems)  # rolled back


def _frame_with(bad: bytes) -> list[tuple[bytes, str, bytes]]:
    """A frame of good memories with ``bad`` in the middle."""
    good = [canon.pack({"kind": "memory", "text": f"fine {i}", "time": i}) for i in range(4)]
    return [(record_id("memory", d), "memory", d) for d in [*good[:2], bad, *good[2:]]]


def _raw(value: dict[str, Any]) -> bytes:
    return canon.pack(value)


#: records the typed path must refuse, as bytes: what canonical form alone decides
BAD_RECORD_BYTES = {
    "duplicate key": b"\x84\xa4kind\xa6memory\xa4text\xa1x\xa4time\x01\xa4time\x02",
    "text as bin": b"\x83\xa4kind\xa6memory\xa4text\xc4\x01x\xa4time\x01",
    "long int form": b"\x83\xa4kind\xa6memory\xa4text\xa1x\xa4time\xcd\x00\x01",
    "str8 kind": b"\x83\xa4kind\xd9\x06memory\xa4text\xa1x\xa4time\x01",
    "int key in meta": b"\x84\xa4kind\xa6memory\xa4meta\x81\x01\x01\xa4text\xa1x\xa4time\x01",
    "timestamp in meta": b"\x84\xa4kind\xa6memory\xa4meta\x81\xa1t\xd6\xff\x00\x00\x00\x01\xa4text\xa1x\xa4time\x01",
    "ext in meta": b"\x84\xa4kind\xa6memory\xa4meta\x81\xa1t\xd4\x01\x00\xa4text\xa1x\xa4time\x01",
    "keys out of order": b"\x83\xa4kind\xa6memory\xa4time\x01\xa4text\xa1x",
    "non-NFC text": _raw({"kind": "memory", "text": "e\u0301", "time": 1}),
    "non-NFC tag": _raw({"kind": "memory", "tags": ["e\u0301"], "text": "x", "time": 1}),
    "non-NFC meta key": _raw({"kind": "memory", "meta": {"e\u0301": 1}, "text": "x", "time": 1}),
    "tag over 256": _raw({"kind": "memory", "tags": ["é" * 257], "text": "x", "time": 1}),
    "ttl 2^63": _raw({"kind": "memory", "text": "x", "time": 1, "ttl": 1 << 63}),
    "embedding extra key": _raw({"embedding": {"data": b"\x00" * 4, "dtype": "f32", "shape": [1], "x": 1},
                                 "kind": "memory", "text": "x", "time": 1}),
    "embedding shape 0": _raw({"embedding": {"data": b"", "dtype": "f32", "shape": [0]}, "kind": "memory",
                               "text": "x", "time": 1}),
    "embedding f16": _raw({"embedding": {"data": b"\x00" * 4, "dtype": "f16", "shape": [2]}, "kind": "memory",
                           "text": "x", "time": 1}),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORD_BYTES) + [f"memory {i}" for i in range(len(BAD_MEMORIES))])
def test_a_bad_record_among_good_ones_fails_the_same_way(tmp_path: Path, name: str) -> None:
    bad = BAD_RECORD_BYTES[name] if name in BAD_RECORD_BYTES else canon.pack(BAD_MEMORIES[int(name.split()[1])])
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("before")
        write_commit(cap._store, _frame_with(bad), force_index=True)  # open does not replay it
        with cap.commit() as tx:
            tx.remember("after")
    with capsule.open(p) as cap:
        with pytest.raises(DataError) as slow:
            fold(cap.records())
        with pytest.raises(DataError) as fast:
            cap.state()
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)


def test_a_frame_the_typed_path_leaves_is_still_read(tmp_path: Path) -> None:
    """Valid memories the typed path does not take (nested meta, a float) come out as the
    exact way gives them, beside typed ones."""
    p = tmp_path / "a.capsule"
    odd = [_raw({"kind": "memory", "meta": {"d": {"x": [1, None]}}, "text": "nested", "time": 5}),
           _raw({"kind": "memory", "meta": {"f": 1e-07}, "text": "float", "time": 6})]
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("typed")
        for d in odd:
            write_commit(cap._store, _frame_with(d))
    with capsule.open(p) as cap:
        assert cap.state().to_json_bytes() == reference(cap)
        assert b'"f":1e-07' in reference(cap)


def test_decode_bulk_walks_no_header_of_a_well_formed_array(monkeypatch: pytest.MonkeyPatch) -> None:
    """11: an array msgspec splits has every value its headers promise; walking its headers
    in Python (promises_fit) took a third of a 100k-record state."""
    walked: list[int] = []
    real = canon.promises_fit
    def counted(raw: bytes | memoryview, pos: int = 0) -> bool:
        walked.append(pos)
        return real(raw, pos)

    monkeypatch.setattr(canon, "promises_fit", counted)
    v = [{"kind": "memory", "text": "x" * 40, "time": 2**64 - 1 - i, "n": [0xDC] * 3} for i in range(3000)]
    raw = canon.encode(v, max_objects=1 << 30)
    assert len(raw.translate(None, canon._NOT_WIDE)) * len(raw) > 1 << 16  # the old code walked it
    assert canon.decode_bulk(raw) == v
    assert walked == []
    bad = b"\x91" + b"\xdc\xff\xff" * 3000  # headers promising more than the bytes hold: still refused
    with pytest.raises(NonCanonicalError, match="promises more values"):
        canon.decode_bulk(bad)
    assert walked
