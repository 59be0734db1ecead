"""The persisted lexical index (spec 16.4, 16.8): a snapshot changes no result, a bad one is rebuilt.

The model: the same capsule searched twice, once through the ``bm25`` snapshot
blobs and the records after them, once with the catalog rebuilt from the records
(a searcher whose catalog starts empty at the first frame, which is exactly what
a reader does when it finds no usable blob), must give the same hits with
bit-identical scores, through reverts, restores, ttl expiry, every filter and
a tail of records after the newest snapshot.
"""

from __future__ import annotations

import hashlib
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import capsule
from capsule.core import constants as C
from capsule.search import catalog, engine, lexcodec, lexsnap, part
from capsule.search import tokenize as tokenizer
from capsule.search.catalog import Catalog
from capsule.search.lexical import rule_of, tokenize
from capsule.search.tokenize import TOKENIZER_2, tokenize2

T0 = 1_767_225_600 * 10**9
WORDS = ["deploy", "freeze", "friday", "staging", "db", "café", "CAFE\u0301", "straße", "STRASSE", "k8s", "node_js",
         "ﬁle", "İstanbul", "42", "deploys", "x"]
KEY = capsule.PrivateKey.from_seed(bytes([7]) * 32)


def lexical(cap: capsule.Capsule, query: str, *, rebuild: bool = False, **kw: Any) -> list[tuple[str, float]]:
    s = cap._search.searcher()
    if rebuild and s.lex.cat is None:
        s.lex.cat = Catalog()  # no snapshot: every record is read and tokenized (16.4)
    got = [(h.id, h.score) for h in cap.search(query, mode="lexical", **kw)]
    assert not rebuild or s.lex.cat.snapshot is None
    return got


QUERIES = ["deploy friday", "café", "strasse", "k8s node", "42 x staging", "file istanbul", "nothing here",
           "deploy deploys db freeze"]
FILTERS: list[dict[str, Any]] = [
    {}, {"tags": ["a"]}, {"any_tags": ["b", "c"]}, {"tags": ["a", "b"]}, {"tier": "validated"},
    {"tier": ["scratch", "working"]}, {"kind": "decision"}, {"kind": ["memory", "note"]},
    {"since": T0 + 5}, {"until": T0 + 9}, {"meta": {"m": 1}}, {"tags": ["c"], "since": T0 + 2, "tier": "working"},
]


def all_results(cap: capsule.Capsule, *, rebuild: bool, nows: tuple[int, ...] = (T0 + 50, T0 + 10**12)) -> list[Any]:
    out = []
    for q in QUERIES:
        for f in FILTERS:
            for now in nows:
                out.append(lexical(cap, q, rebuild=rebuild, k=7, now=now, **f))
    return out


def reference(path: Path, query: str, k: int, now: int) -> list[tuple[str, float]]:
    """16.4 and 16.6 written from the spec text, in plain Python floats (IEEE float64, each
    operation rounded as written): what both paths must return, to the bit. (No record here has a
    session: the window of 16.4.1 is each document alone; tests/test_context_window.py has them.)"""
    docs, dead = [], set()
    with capsule.open(path) as cap:
        tokenize = rule_of(cap._snap.header.minor).tok.tokenize  # 12.8: the file's tokenizer
        for r in cap.records():
            if r.kind == "revert":
                dead |= {x.hex() for x in r.drop}
                dead -= {x.hex() for x in r.restore}
            elif r.kind in ("memory", "note", "decision"):
                text = r.summary + "\n" + r.rationale if r.kind == "decision" else r.text
                docs.append((r.id, tokenize(text), r.time, getattr(r, "ttl", None) or 0))
    n = len(docs)
    if not n:
        return []
    total = sum(len(d[1]) for d in docs)
    avg = total / n if total else 1.0
    terms = sorted(set(tokenize(query)))
    df = {t: sum(t in d[1] for d in docs) for t in terms}
    scored = []
    for rid, toks, time, ttl in docs:
        s = 0.0
        for t in terms:
            tf = float(toks.count(t))
            if tf:
                idf = math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf * (1.2 + 1.0) / (tf + 1.2 * (1.0 - 0.75 + 0.75 * float(len(toks)) / avg))
        if s > 0 and rid not in dead and not (ttl and time + ttl <= now):
            scored.append((rid, s))
    return sorted(scored, key=lambda x: (-x[1], x[0]))[:k]


# --- the property: with and without the snapshot ------------------------------------------------------

record = st.fixed_dictionaries({
    "kind": st.sampled_from(["memory", "memory", "memory", "note", "decision"]),
    "words": st.lists(st.sampled_from(WORDS), min_size=0, max_size=6),
    "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True),
    "tier": st.sampled_from(["scratch", "working", "validated"]),
    "ttl": st.sampled_from([None, None, 30, 10**15]),
    "meta": st.sampled_from([None, {"m": 1}, {"m": 2}]),
})
op = st.one_of(
    st.tuples(st.sampled_from(["commit", "undo"]), st.lists(record, min_size=1, max_size=6)),
    st.tuples(st.sampled_from(["save", "checkpoint", "rollback", "readd", "reopen", "search"])),
)


def put(tx: Any, r: dict[str, Any], t: int) -> str:
    text = " ".join(r["words"])
    if r["kind"] == "note":
        return str(tx.note(text, time=t))
    if r["kind"] == "decision":
        return str(tx.decide(text or "-", rationale=" ".join(reversed(r["words"])), time=t))
    return str(tx.remember(text, tags=r["tags"], tier=r["tier"], ttl=r["ttl"], time=t, meta=r["meta"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=12), tail=st.lists(record, max_size=4))
def test_snapshot_and_rebuild_give_the_same_hits(tmp_path_factory: pytest.TempPathFactory,
                                                 monkeypatch: pytest.MonkeyPatch, ops: list[Any],
                                                 tail: list[dict[str, Any]]) -> None:
    # small thresholds, so that a few records make several segments, merges and catch-ups
    monkeypatch.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 2)
    monkeypatch.setattr(part, "LEX_SNAPSHOT_EVERY", 3)
    monkeypatch.setattr(catalog, "FEED_CHUNK", 2)  # a commit's records make several segments,
    monkeypatch.setattr(catalog, "FEED_BYTES", 300)  # read and built before the catalog is needed,
    monkeypatch.setattr(part, "LEX_FED_MAX", 9)  # and snapshotted once enough of them wait
    p = tmp_path_factory.mktemp("prop") / "p.capsule"
    t = T0
    written: list[dict[str, Any]] = []
    checkpoints = 0
    cap = capsule.create(p)
    try:
        for o in ops:
            if o[0] in ("commit", "undo"):
                if o[0] == "undo":  # records a rollback drops at once (7.7)
                    checkpoints += 1
                    cap.checkpoint(f"c{checkpoints}", key=KEY)
                with cap.commit() as tx:
                    for r in o[1]:
                        put(tx, r, t)
                        written.append({**r, "time": t})
                        t += 1
                if o[0] == "undo":
                    cap.rollback(f"c{checkpoints}")
            elif o[0] == "save":
                cap.save_index()
            elif o[0] == "checkpoint":
                checkpoints += 1
                cap.checkpoint(f"c{checkpoints}", key=KEY)
            elif o[0] == "rollback" and checkpoints:
                cap.rollback(f"c{checkpoints}")
            elif o[0] == "readd" and written:
                with cap.commit() as tx:  # the same bytes again: a restore if it was dropped (7.7)
                    r = written[len(written) // 2]
                    put(tx, r, r["time"])
            elif o[0] == "reopen":
                cap.close()
                cap = capsule.open(p, "a")
            elif o[0] == "search":
                cap.search("deploy", mode="lexical")  # loads the catalog: commits snapshot it (16.8)
    finally:
        cap.close()
    if tail:
        monkeypatch.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 10**9)
        with capsule.open(p, "a") as cap, cap.commit() as tx:  # a tail the newest snapshot lacks
            for r in tail:
                put(tx, r, t)
                t += 1
    with capsule.open(p) as a, capsule.open(p) as b:
        got = all_results(a, rebuild=False)
        assert a.index_info()["doubt"] is None
        cat = a._search.searcher().lex.cat
        event(f"segments from the snapshot: {min(3, sum(s.ref is not None for s in cat.segs))}")
        event(f"documents after it: {'some' if cat.n > cat.covered else 'none'}")
        event(f"dead ids: {'some' if cat.dead else 'none'}")
        event(f"hits: {'some' if any(got) else 'none'}")
        want = all_results(b, rebuild=True)
        assert b._search.searcher().lex.cat.snapshot is None
        assert got == want
        for q in QUERIES:
            assert lexical(a, q, k=5, now=T0 + 40) == reference(p, q, 5, T0 + 40), q
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error


def test_a_snapshot_is_used_and_only_the_tail_is_tokenized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first search after open reads the snapshot and tokenizes only the records after it."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        for lo in range(0, 3000, 1000):
            with cap.commit() as tx:
                for i in range(lo, lo + 1000):
                    tx.remember(f"item {i} deploy {'red' if i % 2 else 'blue'}", tags=[f"t{i % 3}"], time=T0 + i)
    with capsule.open(p, "a") as cap, cap.commit() as tx:  # 10 records: under the close threshold
        for i in range(3000, 3010):
            tx.remember(f"item {i} deploy green", time=T0 + i)
    seen: list[str] = []
    real = lexsnap.build_columns
    monkeypatch.setattr(lexsnap, "build_columns", lambda ids, texts, *a, **kw: seen.extend(texts) or real(ids, texts, *a,
                                                                                                         **kw))
    with capsule.open(p) as cap:
        hits = lexical(cap, "green deploy", k=3)
        cat = cap._search.searcher().lex.cat
        assert cat is not None and cat.snapshot is not None and cat.covered == 3000
        assert len(seen) == 10, "only the records after the snapshot are tokenized"
        assert len(hits) == 3 and all(cap.get(h).text.endswith("deploy green") for h, _ in hits)
        assert cap.index_info()["lexical"]["snapshot"]["documents"] == 3000
    with capsule.open(p) as cap:
        assert lexical(cap, "green deploy", k=3, rebuild=True) == hits


def test_same_records_same_blob_and_segments_merge_to_the_whole(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    files = []
    for name in ("x", "y"):
        p = tmp_path / f"{name}.capsule"
        with capsule.create(p) as cap:
            for lo in range(0, 600, 200):
                with cap.commit() as tx:
                    for i in range(lo, lo + 200):
                        tx.remember(f"{WORDS[i % len(WORDS)]} {i}", tags=["a"] if i % 2 else [], time=T0 + i)
                cap.save_index()
        files.append(p.read_bytes())
    assert files[0] == files[1], "reproducible mode: byte-identical files, blobs included"
    docs = [(hashlib.sha256(bytes([i])).digest(), f"{WORDS[i % len(WORDS)]} w{i % 5}", T0 + i, 0, 1, 0,
             ("a",) if i % 3 else ()) for i in range(50)]
    whole = lexsnap.encode(lexsnap.build(docs), [], [])
    parts = [lexsnap.build(docs[:7]), lexsnap.build(docs[7:30], 7), lexsnap.build(docs[30:], 30)]
    assert lexsnap.encode(lexsnap.merge(parts), [], []) == whole
    seg = lexsnap.decode(whole)
    assert lexsnap.encode(lexsnap.merge([lexsnap.decode(lexsnap.encode(parts[0], [], [])), lexsnap.merge(parts[1:])]),
                          [], []) == whole
    assert seg.n == 50 and seg.tokens == sum(len(tokenize(d[1])) for d in docs)


def test_segments_stay_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """9.3's binary counter: many small snapshots make O(log n) segments, each a base of the next."""
    monkeypatch.setattr(part, "lexical_close_due", lambda covered: 1)  # a segment every close
    p = tmp_path / "s.capsule"
    for i in range(40):
        with capsule.open(p, "a") if p.exists() else capsule.create(p) as cap, cap.commit() as tx:
            tx.remember(f"session {i} deploy", time=T0 + i)
    with capsule.open(p) as cap:
        cat = cap._search.searcher().docs()
        sizes = [s.n for s in cat.segs]
        assert sum(sizes) == 40 and len(sizes) <= 6, sizes
        assert all(s.ref is not None for s in cat.segs), "every document is in the snapshot"
        got = lexical(cap, "deploy session", k=40)
    with capsule.open(p) as cap:
        assert got == lexical(cap, "deploy session", k=40, rebuild=True)
    assert capsule.verify(p).ok


# --- damage and doubt --------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Any]]:
    monkeypatch.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 2)  # so that save_index() writes one for 41 records
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(40):
                tx.remember(f"deploy {WORDS[i % len(WORDS)]} {i}", tags=["a"] if i % 2 else ["b"], time=T0 + i)
            tx.note("deploy notes", time=T0 + 40)
        assert cap.save_index()
    with capsule.open(p) as cap:
        want = all_results(cap, rebuild=True)
    return p, want


def forge(p: Path, blob: bytes) -> None:
    """Append ``blob`` as the newest lexical snapshot (and no honest one after it on close)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 10**9)
        with capsule.open(p, "a") as cap:
            cap._write_commit([], blob=(lexsnap.BLOB_TYPE, blob))


def honest(p: Path) -> tuple[lexsnap.Segment, bytes]:
    with capsule.open(p) as cap:
        ref = cap._snap.blobs[lexsnap.BLOB_TYPE]
        raw = cap._h.pread(ref.offset + C.FRAME_HEADER_SIZE, ref.size + 4096)
    hl = struct.unpack_from("<H", raw)[0]
    blob = raw[2 + hl : 2 + hl + ref.size]
    return lexsnap.decode(blob), blob


def reheader(blob: bytes, **change: Any) -> bytes:
    """The blob with header fields changed (the sections kept as they are)."""
    from capsule.format import canonical as canon

    hl = struct.unpack_from("<I", blob, 8)[0]
    h = canon.decode(blob[12 : 12 + hl])
    body = blob[(12 + hl + 7) & ~7 :]
    nh = canon.pack({**h, **change})
    return blob[:8] + struct.pack("<I", len(nh)) + nh + bytes(-(12 + len(nh)) % 8) + body


def _patch(blob: bytes, section: str, at: int, new: bytes) -> bytes:
    """The blob with bytes of one section replaced (16.8's layout, from the header)."""
    off = lexsnap.layout(blob)[1][section][0] + at
    return blob[:off] + new + blob[off + len(new) :]


def _bad_block(blob: bytes) -> bytes:
    """The block of "deploy" with every bit set: its size still fits, its high bitmap does not."""
    seg = lexsnap.decode(blob)
    i = seg.terms.find(b"deploy")
    a, b = int(seg.terms.at[i]), int(seg.terms.at[i + 1])
    return _patch(blob, "postings", a, b"\xff" * (b - a))


def _drop_last_document(blob: bytes) -> bytes:
    seg = lexsnap.decode(blob)
    docs = []
    for j in range(seg.n - 1):
        docs.append((seg.ids[j : j + 1].tobytes(), "", int(seg.time[j]), int(seg.ttl[j]), int(seg.tier[j]),
                     int(seg.kind[j]), ()))
    return lexsnap.encode(lexsnap.build(docs), [], [])


DAMAGE = {
    "bad magic": lambda b: b"CAPLEX00" + b[8:],
    "truncated": lambda b: b[:-8],
    "header key missing": lambda b: _drop_key(b, "reverts"),
    "count past the blob": lambda b: reheader(b, postings=10**6),
    "token total wrong": lambda b: reheader(b, tokens=1),
    "tier out of range": lambda b: _patch(b, "tk", 0, b"\x09"),
    "document frequency past the documents": lambda b: _patch(b, "term_df", 0, b"\xc8"),
    "term frequencies and token total disagree": lambda b: _patch(b, "term_extra", 0, b"\x03"),
    "escapes do not match the small ints": lambda b: _patch(b, "len", 0, b"\xff"),
    "posting block bad (seen by a query)": _bad_block,
    "covers too few documents": _drop_last_document,
    "base names no blob": lambda b: reheader(b, base=[[64, 1, 10, bytes(32)]]),
}


def _drop_key(blob: bytes, key: str) -> bytes:
    from capsule.format import canonical as canon

    hl = struct.unpack_from("<I", blob, 8)[0]
    h = canon.decode(blob[12 : 12 + hl])
    del h[key]
    nh = canon.pack(h)
    return blob[:8] + struct.pack("<I", len(nh)) + nh + bytes(-(12 + len(nh)) % 8) + blob[(12 + hl + 7) & ~7 :]


@pytest.mark.parametrize("what", list(DAMAGE))
def test_a_bad_snapshot_is_rebuilt_and_reported(small: tuple[Path, list[Any]], what: str) -> None:
    p, want = small
    _, blob = honest(p)
    forge(p, DAMAGE[what](blob))
    with capsule.open(p) as cap:
        assert all_results(cap, rebuild=False) == want
        doubt = cap.index_info()["doubt"]
        assert doubt and "lexical" in doubt and "rebuilt the lexical index" in doubt
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lexical", rep.first_error


def test_a_snapshot_of_another_tokenizer_is_passed_over(small: tuple[Path, list[Any]]) -> None:
    p, want = small
    _, blob = honest(p)
    forge(p, reheader(blob, tokenizer="whitespace/9"))
    with capsule.open(p) as cap:
        assert all_results(cap, rebuild=False) == want
        assert "tokenizer" in (cap.index_info()["doubt"] or "")
        assert cap._search.searcher().lex.cat.snapshot is None
    assert capsule.verify(p).ok, "another tokenizer is not damage: its bounds hold"
    with capsule.open(p, "a") as cap:  # a writer replaces it with one of its own
        assert cap.save_index()
    with capsule.open(p) as cap:
        assert all_results(cap, rebuild=False) == want and cap.index_info()["doubt"] is None


def test_verify_rebuilds_and_compares(small: tuple[Path, list[Any]]) -> None:
    """A well-formed snapshot whose columns are not the records' fails verification (16.8)."""
    p, _ = small
    seg, blob = honest(p)
    forged = _patch(blob, "time", 0, struct.pack("<q", int(seg.time[0]) + 1))
    assert lexsnap.decode(forged).n == seg.n  # every bound still holds
    forge(p, forged)
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lexical"
    assert "does not match the records" in rep.first_error["message"]


def test_dead_ids_come_from_the_revert_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback before the snapshot: the blob names its revert record (16.8), the reader reads
    it, and later reverts apply on top."""
    monkeypatch.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 2)
    p = tmp_path / "r.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            keep = tx.remember("deploy keep", time=T0)
        cap.checkpoint("one", key=KEY)
        with cap.commit() as tx:
            gone = tx.remember("deploy gone", time=T0 + 1)
        cap.rollback("one")
        cap.save_index()
        with cap.commit() as tx:
            tx.remember("deploy gone", time=T0 + 1)  # re-added: a restore after the snapshot
            late = tx.remember("deploy late", time=T0 + 2)
    seg, blob = honest(p)
    assert len(seg.reverts) == 1
    with capsule.open(p) as cap:
        got = lexical(cap, "deploy")
        assert {h for h, _ in got} == {keep, gone, late}
        assert cap._search.searcher().lex.cat.reverts[0] == seg.reverts[0]
    with capsule.open(p) as cap:
        assert got == lexical(cap, "deploy", rebuild=True)


@pytest.mark.parametrize("how", ["no reverts", "a memory for the revert"])
def test_a_snapshot_cannot_bring_back_rolled_back_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          how: str) -> None:
    """A forged snapshot that leaves out a revert (or names another record) is not used: the
    dead ids always come from the revert records (13.1, 16.8)."""
    monkeypatch.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 1)
    p = tmp_path / "secret.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            public = tx.remember("deploy public", time=T0)
        cap.checkpoint("c0", key=KEY)
        with cap.commit() as tx:
            secret = tx.remember("deploy secret", time=T0 + 1)
        cap.rollback("c0")
        cap.save_index()
    seg, _ = honest(p)
    assert len(seg.reverts) == 1
    forged = lexsnap.encode(seg, [], [] if how == "no reverts" else [bytes.fromhex(public)])
    forge(p, forged)
    with capsule.open(p) as cap:
        assert [h for h, _ in lexical(cap, "deploy secret")] == [public]
        assert "lexical" in (cap.index_info()["doubt"] or "")
        assert cap.search("deploy", mode="lexical", tags=[]) and secret not in {h.id for h in cap.search("deploy")}
    assert capsule.verify(p).first_error["check"] == "lexical"  # type: ignore[index]


def test_decode_refuses_every_truncation(small: tuple[Path, list[Any]]) -> None:
    p, _ = small
    _, blob = honest(p)
    for cut in range(0, len(blob), max(1, len(blob) // 97)):
        with pytest.raises(capsule.CorruptError):
            lexsnap.decode(blob[:cut])
    assert lexsnap.peek(blob)["tokenizer"] == TOKENIZER_2  # type: ignore[index]  # 1.4 (12.8)


def test_hits_read_their_records_from_the_capsule(small: tuple[Path, list[Any]]) -> None:
    p, _ = small
    with capsule.open(p) as cap:
        hits = cap.search("deploy café", mode="lexical", k=3)
        assert all(h._rec is None for h in hits), "the catalog holds no records"
        assert [h.text for h in hits] == [cap.get(h.id).text for h in hits]
        assert np.all(np.diff([h.score for h in hits]) <= 0)


def test_peek_covered_needs_no_scan(small: tuple[Path, list[Any]]) -> None:
    p, _ = small
    with capsule.open(p) as cap:
        assert catalog.peek_covered(cap._store) == 41
        assert cap._search.lexical_pending() == 0


# --- the compact layout (16.8): blocks, small ints, the bulk tokenizer ------------------------------


def _spec_block(block: bytes, n: int, p: int, x: int) -> tuple[list[int], list[int]]:
    """16.8's posting block read bit by bit, as the spec text says (an independent reader)."""
    bits = [(block[j // 8] >> (j % 8)) & 1 for j in range(8 * len(block))]
    L = (n // p).bit_length() - 1
    low = [sum(bits[i * L + b] << b for b in range(L)) for i in range(p)]
    hb = bits[p * L : p * L + p + ((n - 1) >> L)]
    ones = [j for j, v in enumerate(hb) if v]
    assert len(ones) == p
    docs = [((q - i) << L) | low[i] for i, q in enumerate(ones)]
    tf = [1] * p
    if x:
        tb = bits[p * L + len(hb) : p * L + len(hb) + p + x]
        i = 0
        for v in tb:
            if v:
                tf[i] += 1
            else:
                i += 1
        assert i == p and tb[-1] == 0
    used = p * L + len(hb) + (p + x if x else 0)
    assert len(block) == (used + 7) // 8 and not any(bits[used:])
    return docs, tf


def test_blocks_are_what_the_spec_says(small: tuple[Path, list[Any]]) -> None:
    """Every term's and tag's block of a written snapshot, read by the spec text alone, holds
    the documents and term frequencies of the records (counted here from tokenize2(): 1.4, 12.8)."""
    p, _ = small
    seg, blob = honest(p)
    _, where = lexsnap.layout(blob)
    with capsule.open(p) as cap:
        texts = [r.text for r in cap.records() if r.kind in ("memory", "note")]
        tags = [tuple(getattr(r, "tags", ())) for r in cap.records() if r.kind in ("memory", "note")]
    n = len(texts)
    counts = [{t.encode(): tokenize2(x).count(t) for t in tokenize2(x)} for x in texts]
    region = blob[where["postings"][0] : where["postings"][0] + where["postings"][1]]
    at = 0
    for i, term in enumerate(seg.terms.strings()):
        df, x = int(seg.terms.df[i]), int(seg.terms.extra[i])
        size = lexcodec.block_sizes(n, np.array([df]), np.array([x]))[0]
        docs, tf = _spec_block(region[at : at + size], n, df, x)
        assert docs == [j for j in range(n) if term in counts[j]], term
        assert tf == [counts[j][term] for j in docs], term
        at += size
    assert at == len(region)
    region = blob[where["tag_postings"][0] : where["tag_postings"][0] + where["tag_postings"][1]]
    at = 0
    for i, tag in enumerate(seg.tags.strings()):
        df = int(seg.tags.df[i])
        size = lexcodec.block_sizes(n, np.array([df]))[0]
        assert _spec_block(region[at : at + size], n, df, 0)[0] == [j for j in range(n) if tag.decode() in tags[j]]
        at += size


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_blocks_round_trip_and_refuse_what_a_writer_never_writes(n: int, data: st.DataObject) -> None:
    """Any lists encode and decode back; a block with one bit flipped is refused or is exactly
    the block of what it decodes to (a reader accepts only bytes a writer would write)."""
    lists = data.draw(st.lists(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)
                               .map(sorted), max_size=6))
    tfs = [data.draw(st.lists(st.integers(1, 300), min_size=len(x), max_size=len(x))) for x in lists]
    off = np.array([0, *np.cumsum([len(x) for x in lists])], np.int64)
    docs = np.array([d for x in lists for d in x], np.uint32)
    tf = np.array([f for x in tfs for f in x], np.uint32)
    df = np.diff(off)
    extra = np.array([sum(f) - len(f) for f in tfs], np.int64)
    raw = lexcodec.encode_blocks(n, off, docs, tf)
    assert len(raw) == lexcodec.block_sizes(n, df, extra).sum()
    got = lexcodec.decode_blocks(np.frombuffer(raw, np.uint8), n, df, extra)
    assert got[0].tolist() == docs.tolist() and got[1].tolist() == tf.tolist()
    at = np.concatenate(([0], np.cumsum(lexcodec.block_sizes(n, df, extra))))
    for i in range(len(lists)):  # one block at a time, as a query reads it
        one = lexcodec.decode_one(np.frombuffer(raw[at[i] : at[i + 1]], np.uint8), n, int(df[i]), int(extra[i]))
        assert one[0].tolist() == lists[i] and one[1].tolist() == tfs[i]
    if raw:
        bit = data.draw(st.integers(0, 8 * len(raw) - 1))
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        i = int(np.searchsorted(at, bit // 8, side="right")) - 1
        try:
            one = lexcodec.decode_one(np.frombuffer(bytes(bad[at[i] : at[i + 1]]), np.uint8), n, int(df[i]),
                                      int(extra[i]))
        except lexcodec.CodeError:
            one = None
        try:
            d2, t2 = lexcodec.decode_blocks(np.frombuffer(bytes(bad), np.uint8), n, df, extra)
        except lexcodec.CodeError:
            event("flipped bit refused")
            assert one is None, "a query's decoder accepts what the bulk one refuses"
            return
        event("flipped bit gives other lists")
        posts = np.concatenate(([0], np.cumsum(df)))
        assert one is not None, "a query's decoder refuses what the bulk one accepts"
        assert one[0].tolist() == d2[posts[i] : posts[i + 1]].tolist()
        assert one[1].tolist() == t2[posts[i] : posts[i + 1]].tolist()
        assert lexcodec.encode_blocks(n, off, d2, t2) == bytes(bad)


# pieces of texts: ASCII, non-ASCII that NFKC or case folding changes, tokens of 8 and more bytes
TEXT = st.lists(st.sampled_from(list("ab Z9_-.\x00\t") + ["é", "É", "ß", "ﬁ", "İ", "Σ", "ς", "\u0301", "٣", "ｶ", "①",
                                                           "\u00a0", "K", "abcdefgh", "abcdefghi", "x" * 17]),
                max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXT, max_size=8), chunk=st.sampled_from([1, 3, 1 << 22]))
def test_bulk_tokenizer_is_tokenize(texts: list[str], chunk: int) -> None:
    """16.4: the many-texts tokenizer cuts exactly what tokenize() cuts, text by text, and
    numbers the tokens in byte order."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer, "_CHUNK_CHARS", chunk)
        terms, tid, lens = tokenizer.term_ids1(texts)
    want = [[t.encode() for t in tokenize(x)] for x in texts]
    assert terms == sorted({t for w in want for t in w})
    assert lens.tolist() == [len(w) for w in want]
    assert [terms[i] for i in tid.tolist()] == [t for w in want for t in w]


def test_a_snapshot_is_small(tmp_path: Path) -> None:
    """Issue 14: about 200-byte English records cost at most ~80 bytes of snapshot each (272 in
    the first layout), whatever the tail of rare words."""
    words = ["the", "a", "to", "of", "and", "in", "is", "it", "you", "that", "we", "for", "on", "with", "was", "my",
             "so", "this", "but", "have", "are", "like", "be", "just", "what", "do", "can", "not", "really", "about",
             "would", "know", "think", "when", "time", "one", "how", "been", "all", "going", "out", "your"]
    rng = np.random.default_rng(7)
    n = 5000
    texts = []
    for i in range(n):
        common = rng.choice(words, 40).tolist()
        rare = [f"w{int(x)}" for x in rng.zipf(1.3, 4)]
        texts.append(" ".join(common + rare + [f"#{i}"]).capitalize() + ".")
    docs = [(hashlib.sha256(t.encode()).digest(), t, T0 + i * 1_000_003, 0, 1, 0, ("chat",)) for i, t in
            enumerate(texts)]
    blob = lexsnap.encode(lexsnap.build(docs), [], [])
    per = len(blob) / n
    assert 180 <= sum(map(len, texts)) / n <= 230
    assert per <= 80, per


def _count_scanned(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The ids the searcher reads back from the file (the catalog's catch-up), recorded."""
    seen: list[bytes] = []
    real = engine.Searcher._scan

    def scan(self: Any, *a: Any, **kw: Any) -> Any:
        for rid, rec in real(self, *a, **kw):
            seen.append(rid)
            yield rid, rec

    monkeypatch.setattr(engine.Searcher, "_scan", scan)
    return seen


def test_close_does_not_read_back_what_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot written on close comes from the records as the handle wrote them: none is
    read back from the file (it used to decode and check every record it had just committed);
    records of another session after the newest snapshot are, and only they."""
    p = tmp_path / "w.capsule"
    seen = _count_scanned(monkeypatch)
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.put_many([{"text": f"deploy {WORDS[i % len(WORDS)]} {i}", "tags": ["a"]} for i in range(600)])
        with cap.commit() as tx:
            tx.note("deploy notes")
    assert seen == []
    with capsule.open(p) as cap:
        assert cap.index_info()["lexical"]["snapshot"]["documents"] == 601
    with capsule.open(p, "a") as cap, cap.commit() as tx:  # under the close threshold: no snapshot
        gap = [tx.remember(f"gap {i} deploy") for i in range(5)]
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:
            tx.put_many([{"text": f"later {i} deploy"} for i in range(300)])
        assert seen == []
        got = lexical(cap, "deploy gap", k=5)
        assert {h for h, _ in got} == set(gap)
        assert sorted(x.hex() for x in seen) == sorted(gap), "only the other session's records are read"
    with capsule.open(p) as cap:
        assert got == lexical(cap, "deploy gap", k=5, rebuild=True)
        assert cap.index_info()["doubt"] is None
    assert capsule.verify(p).ok


def test_a_writer_that_never_searches_keeps_little(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a handle keeps for the catalog is bounded: once LEX_FED_MAX committed records wait,
    a commit writes a snapshot (16.8), and the catalog takes over from there."""
    monkeypatch.setattr(part, "LEX_FED_MAX", 50)
    p = tmp_path / "m.capsule"
    with capsule.create(p) as cap:
        for lo in range(0, 120, 20):
            with cap.commit() as tx:
                tx.put_many([{"text": f"deploy step {i}"} for i in range(lo, lo + 20)])
            lex = cap._search.searcher().lex
            assert lex.fed_records() < 50
            if lo == 40:
                assert catalog.peek_covered(cap._store) == 60  # written after the commit that reached 60
    with capsule.open(p) as cap:
        assert cap.index_info()["lexical"]["snapshot"]["documents"] == 120
        got = lexical(cap, "deploy step 7", k=3)
    with capsule.open(p) as cap:
        assert got == lexical(cap, "deploy step 7", k=3, rebuild=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=12), max_size=40, unique=True), st.lists(st.binary(max_size=14),
       max_size=20), st.integers(min_value=0, max_value=3))
def test_dictionary_find_is_a_lookup(strs: list[bytes], probes: list[bytes], longest: int) -> None:
    """``Dictionary.find`` compares a string by its first len(key) + 1 bytes only; it must
    still find exactly the strings that are there, among long ones and shared prefixes."""
    strs = sorted({*strs, *(s + b"z" * 3000 * longest for s in strs[:longest])})
    n = len(strs)
    d = lexsnap.Dictionary.decoded(strs, np.ones(n, np.int64), None, np.zeros(n, np.uint32), np.ones(n, np.uint32))
    where = {s: i for i, s in enumerate(strs)}
    for key in [*probes, *strs, *(s[:-1] for s in strs), *(s + b"\0" for s in strs)]:
        assert d.find(key) == where.get(key, -1)
