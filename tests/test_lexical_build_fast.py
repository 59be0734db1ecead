"""The bulk lexical build (issue 14) against the reference, text by text (spec 16.4, 16.4.1, 16.8).

``term_ids1``/``term_ids2`` number runs in NumPy (u64 keys, a hash table, two-word keys for
runs of 9-16 bytes) and expand digit and a-z chunks in bulk; the catalog decodes committed
records with C loops. None of that may change a token, a number or a snapshot byte: each is
compared here with the plainest path (``tokenize1``/``tokenize2`` one text at a time, the
records read back one by one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.core import constants as C
from capsule.search import lexsnap, runs
from capsule.search import tokenize as tk
from capsule.search.catalog import doc_of

# pieces of texts: ASCII words of every case, digits, identifier characters, runs of 8, 9,
# 16 and 17 bytes (the key widths), NUL, and non-ASCII that folding, NFKC or marks change
PIECES = [*"aZ9_.+#- \x00\t", "the", "running", "HTTPServer", "camelCase", "C++", "C#", "node.js", "__init__",
          "CMAKE_BUILD_TYPE", "v1.2.3", "#12", "12#", "..x..", "_7_", "0042", "abcdefgh", "abcdefghi",
          "abcdefghijklmnop", "abcdefghijklmnopq", "1234567890123456789", "é", "É", "ß", "ﬁ", "İ", "Σ", "ς",
          "\u0301", "\u0903", "٣", "ｶ", "①", "Café", "naïve", "日本語", "\u00a0"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)
TEXTS = st.lists(TEXT, max_size=10)


def reference_ids(texts: Sequence[str], tokenize: Callable[[str], list[str]]) -> tk.Terms:
    """What term_ids means, spelled out: each text's tokens one by one, numbered in byte order."""
    want = [[t.encode() for t in tokenize(x)] for x in texts]
    terms = sorted({t for w in want for t in w})
    rank = {t: i for i, t in enumerate(terms)}
    return (terms, np.array([rank[t] for w in want for t in w], np.int64),
            np.array([len(w) for w in want], np.int64))


def same(got: tk.Terms, want: tk.Terms) -> None:
    assert got[0] == want[0]
    assert got[1].dtype == np.int64 and got[1].tolist() == want[1].tolist()
    assert got[2].dtype == np.int64 and got[2].tolist() == want[2].tolist()


@settings(max_examples=300, deadline=None)
@given(texts=TEXTS, chunk=st.sampled_from([1, 5, 1 << 22]))
def test_term_ids2_is_tokenize2_text_by_text(texts: list[str], chunk: int) -> None:
    """16.4.1: the bulk tokenizer 2 gives every text exactly tokenize2's tokens, in order,
    whether the texts go in one buffer or many, with caches cold or warm."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tk, "_CHUNK_CHARS", chunk)
        mp.setattr(tk, "_CHUNKS", {})
        cold = tk.term_ids2(texts)
        warm = tk.term_ids2(texts)
    want = reference_ids(texts, tk.tokenize2)
    same(cold, want)
    same(warm, want)


@settings(max_examples=200, deadline=None)
@given(texts=TEXTS, chunk=st.sampled_from([1, 5, 1 << 22]))
def test_term_ids1_is_tokenize1_text_by_text(texts: list[str], chunk: int) -> None:
    """16.4: the same for tokenizer 1 (it shares the run numbering)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tk, "_CHUNK_CHARS", chunk)
        got = tk.term_ids1(texts)
    same(got, reference_ids(texts, tk.tokenize1))


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.+#AZ", min_size=1, max_size=20),
                      min_size=1, max_size=300))
def test_bulk_chunk_tokens_are_chunk_tokens(words: list[str]) -> None:
    """The bulk expansion of distinct chunks (digits and a-z words without a per-chunk call)
    gives each chunk the tokens _chunk_tokens gives it."""
    chunks = sorted({w.encode() for w in words})
    got = tk._tokens_of(chunks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tk, "_CHUNKS", {})
        assert got == [tk._chunk_tokens(c) for c in chunks]


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.integers(0, (1 << 64) - 1), max_size=400), probes=st.sampled_from([0, 1, 2, 32]),
       collide=st.booleans())
def test_places_is_searchsorted(keys: list[int], probes: int, collide: bool) -> None:
    """The hash table numbering is a binary search's, including when keys collide (all in one
    slot: the probe limit hands over to the binary search) and with no probing allowed."""
    if collide:  # distinct keys whose top bits of key * _MUL agree: the same slot
        keys = [(k << 40) * pow(runs._MUL, -1, 1 << 64) % (1 << 64) for k in range(len(keys))]
    k = np.array(keys, np.uint64)
    u = np.unique(k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "_PROBES", probes)
        got = runs._places(u, k)
    assert got.tolist() == np.searchsorted(u, k).tolist()


def test_a_corpus_of_every_kind_of_run() -> None:
    """A larger mixed corpus (many distinct numbers and words, runs of every key width, C++,
    camelCase, non-ASCII, NUL, empty texts) through one and several buffers."""
    rng = np.random.default_rng(14)
    texts = [" ".join(str(x) for x in rng.choice(PIECES, int(rng.integers(0, 20))))
             + f" w{i} #{i} {i * 7919} {'q' * int(rng.integers(1, 30))}{i}" for i in range(3000)] + ["", "\x00", " "]
    for chunk in (1 << 12, 1 << 22):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tk, "_CHUNK_CHARS", chunk)
            mp.setattr(tk, "_CHUNKS", {})
            same(tk.term_ids2(texts), reference_ids(texts, tk.tokenize2))
            same(tk.term_ids1(texts), reference_ids(texts, tk.tokenize1))


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=12), tok=st.sampled_from([tk.T1, tk.T2]))
def test_snapshot_bytes_are_the_reference_build(texts: list[str], tok: tk.Tokenizer) -> None:
    """16.8: a segment built by the bulk tokenizer encodes to the very bytes of one built from
    the tokens taken text by text."""
    n = len(texts)
    ref = tk.Tokenizer(tok.id, tok.tokenize, lambda xs: reference_ids(xs, tok.tokenize))
    blobs = []
    for t in (tok, ref):
        ids = bytearray(b"".join(hashlib.sha256(x.encode() + bytes([i])).digest() for i, x in enumerate(texts)))
        seg = lexsnap.build_columns(ids, texts, np.arange(n, dtype=np.int64), np.zeros(n, np.int64),
                                    np.ones(n, np.uint8), np.zeros(n, np.uint8), [("a",) * (i % 2) for i in range(n)],
                                    3, t, [b"s" if i % 3 else None for i in range(n)])
        blobs.append(lexsnap.encode(seg, [], []))
    assert blobs[0] == blobs[1]


def test_the_catalog_of_a_commit_is_the_catalog_of_its_records(tmp_path: Path) -> None:
    """16.4, 16.8: the catalog made from what a handle committed (decoded in bulk) is the one
    made from the records read back one by one: texts (a decision's summary and rationale),
    times, ttls, tiers, kinds, tags and session keys, and so the snapshot blob."""
    p = tmp_path / "c.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"deploy run {i} Café", "tags": ["a", "b"][: i % 3],
                      "meta": {"session": f"s{i % 4}"} if i % 2 else {"other": 1}} for i in range(300)])
        tx.note("a note on deploys")
        tx.decide("Use C++ for the parser", rationale="the old parser was slow")
        tx.put_many([{"text": f"tail {i}"} for i in range(300)])
    with capsule.open(p) as cap:
        s = cap._search.searcher()
        d = s.docs()
        records = list(s._scan(C.HEADER_SIZE, frozenset({"memory", "note", "decision"}), end=cap._store.snap.end))
        assert len(records) == 602 and d.n == 602
        rule = d.rule
        assert rule is not None and d.snapshot is not None
        want = lexsnap.build([doc_of(rid, rec) for rid, rec in records], 0, rule.tok, rule.sessions)
        got = lexsnap.merge(d.segs)
        assert lexsnap.encode(got, [], []) == lexsnap.encode(want, [], [])
