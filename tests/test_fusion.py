"""Hybrid fusion (spec 16.6): weighted z-scores in files of minor >= 4, reciprocal rank before,
and what ``auto`` chose, said in the result and in ``capsule search --explain --json``.

Files of minor 4 are made by creating a capsule with a header that says minor 4 (the
handle's ``FileHeader`` patched for the create only, as test_spec_pins does for 12.5):
everything after the header is what this tree's writer writes, and a reader reads it
under 12.1-12.3. Once the writer itself writes minor 4, the patch changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.format.frames import FileHeader
from capsule.search import fusion
from capsule.search.engine import Searcher

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"
CAPSULE_BIN = Path(sys.executable).with_name("capsule")
T0 = 1_700_000_000 * 10**9

# --- a reference of 16.6's weighted rule, written from the text -------------------------------


def ref_z(xs: Sequence[float]) -> list[float]:
    if not xs:
        return []
    if max(xs) == min(xs):
        return [1.0] * len(xs)
    mean = functools.reduce(operator.add, xs, 0.0) / len(xs)
    var = functools.reduce(operator.add, [(x - mean) * (x - mean) for x in xs], 0.0) / len(xs)
    sd = math.sqrt(var)
    return [1.0] * len(xs) if sd == 0.0 else [(x - mean) / sd for x in xs]


def ref_weighted(lex: Sequence[tuple[bytes, float]], vec: Sequence[tuple[bytes, float]], w: float,
                 k: int) -> list[tuple[bytes, float]]:
    if w == 1.0:
        return list(lex[:k])
    if w == 0.0:
        return list(vec[:k])
    zl, zv = ref_z([s for _, s in lex]), ref_z([s for _, s in vec])
    lo_l, lo_v = min([0.0, *zl]), min([0.0, *zv])
    out = []
    for rid in {r for r, _ in lex} | {r for r, _ in vec}:
        a = next((z for (r, _), z in zip(lex, zl, strict=True) if r == rid), lo_l)
        b = next((z for (r, _), z in zip(vec, zv, strict=True) if r == rid), lo_v)
        out.append((rid, w * a + (1.0 - w) * b))
    out.sort(key=lambda t: (-t[1], t[0]))
    return out[:k]


def ranked_list(draw: Any, ids: Sequence[bytes], scores: Any) -> list[tuple[bytes, float]]:
    """One side's list as a search gives it: distinct ids, score descending, then id ascending."""
    chosen = draw(st.lists(st.sampled_from(ids), unique=True, max_size=len(ids)))
    rows = [(rid, draw(scores)) for rid in chosen]
    return sorted(rows, key=lambda t: (-t[1], t[0]))


IDS = [hashlib.sha256(bytes([i])).digest() for i in range(24)]  # few ids: the two lists overlap often
FEW = st.sampled_from([0.25, 1.0, 1.5, 3.0])  # few values: ties, equal lists
ANY = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def two_lists(draw: Any) -> tuple[list[tuple[bytes, float]], list[tuple[bytes, float]]]:
    scores = draw(st.sampled_from([FEW, ANY]))
    return ranked_list(draw, IDS, scores), ranked_list(draw, IDS, scores)


WEIGHTS = st.one_of(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]), st.floats(min_value=0.0, max_value=1.0))


@settings(max_examples=400, deadline=None)
@given(two_lists(), WEIGHTS, st.integers(min_value=1, max_value=60))
def test_weighted_fusion_matches_the_reference(lists: Any, w: float, k: int) -> None:
    lex, vec = lists
    got = fusion.fuse_weighted([(r, s, None) for r, s in lex], [(r, s, None) for r, s in vec], w, k)
    want = ref_weighted(lex, vec, w, k)
    assert [(r, s.hex()) for r, s, _ in got] == [(r, s.hex()) for r, s in want]  # bit for bit
    union = {r for r, _ in lex} | {r for r, _ in vec}
    size = min(k, len(lex) if w == 1.0 else len(vec) if w == 0.0 else len(union))
    assert len(got) == size  # k larger than the candidates: all of them, no padding
    keys = [(-s, r) for r, s, _ in got]
    assert keys == sorted(keys)  # score descending, ties by id ascending


@settings(max_examples=200, deadline=None)
@given(st.lists(ANY, max_size=40))
def test_zscores_are_centred_and_defined_for_every_list(xs: list[float]) -> None:
    z = fusion.zscores(xs)
    assert z == ref_z(xs) and len(z) == len(xs)
    assert all(math.isfinite(v) for v in z)
    # centred, where float64 can tell the scores apart: a spread near the last bits of their
    # magnitude (or a deviation that underflowed: every z 1) leaves the mean a rounding of one
    wide = bool(xs) and max(xs) - min(xs) > 1e-9 * max(1.0, max(abs(x) for x in xs))
    if wide and z != [1.0] * len(xs):
        assert abs(math.fsum(z)) < 1e-6 * len(xs)
        # monotone: a higher score never gets a lower z
        pairs = sorted(zip(xs, z, strict=True))
        assert all(a[1] <= b[1] for a, b in zip(pairs, pairs[1:], strict=False))


def test_zscores_edge_cases() -> None:
    assert fusion.zscores([]) == []
    assert fusion.zscores([7.5]) == [1.0]  # one score: sd 0, yet it is a match
    assert fusion.zscores([0.1, 0.1, 0.1]) == [1.0, 1.0, 1.0]  # equal, though their float mean is not 0.1
    assert fusion.zscores([0.0, 8.811186480985596e-163]) == [1.0, 1.0]  # unequal, but the deviation underflows
    assert fusion.zscores([-1e6, -999999.9999999999]) == ref_z([-1e6, -999999.9999999999])  # as 16.6 rounds
    assert fusion.zscores([1.0, 3.0]) == [-1.0, 1.0]
    assert fusion.zscores([3.0, 1.0, 2.0]) == [pytest.approx(1.2247448713915890), pytest.approx(-1.224744871391589),
                                               0.0]


def test_weighted_fusion_edges() -> None:
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    lex = [(a, 2.0, None), (b, 1.0, None)]
    # one side empty: the other side's order, its z-scores weighted
    assert [(r, s) for r, s, _ in fusion.fuse_weighted(lex, [], 0.5, 10)] == [(a, 0.5), (b, -0.5)]
    assert [(r, s) for r, s, _ in fusion.fuse_weighted([], lex, 0.25, 10)] == [(a, 0.75), (b, -0.75)]
    assert fusion.fuse_weighted([], [], 0.5, 10) == []
    # a record on one side only takes the lesser of the other side's lowest z and 0; a flat list
    # (all scores equal) gives its records z 1, so the one record the words match is lifted (attack #15)
    got = fusion.fuse_weighted([(b, 1.0, None), (c, 1.0, None)], [(a, 5.0, None), (b, 4.0, None)], 0.5, 3)
    assert [(r, s) for r, s, _ in got] == [(a, 0.5), (b, 0.0), (c, 0.0)]
    only = fusion.fuse_weighted([(c, 3.2, None)], [(a, 0.9, None), (b, 0.8, None), (c, 0.7, None)], 0.5, 3)
    zv = fusion.zscores([0.9, 0.8, 0.7])
    assert {r: s for r, s, _ in only} == {a: 0.5 * zv[0], b: 0.5 * zv[1], c: 0.5 + 0.5 * zv[2]}
    # weights 1 and 0 are the side itself, scores as they came
    assert fusion.fuse_weighted(lex, [(c, 0.9, None)], 1.0, 1) == [(a, 2.0, None)]
    assert fusion.fuse_weighted(lex, [(c, 0.9, None)], 0.0, 5) == [(c, 0.9, None)]
    # a record read on either side is kept with its hit
    assert fusion.fuse_weighted([(a, 1.0, "rec")], [(a, 0.5, None)], 0.5, 1)[0][2] == "rec"


def test_rrf_is_the_16_6_sum() -> None:
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    got = fusion.fuse_rrf([[(a, 0.9, None), (b, 0.8, None)], [(b, 3.0, None), (c, 2.0, None)]], 10)
    assert got == [(b, 1 / 62 + 1 / 61, None), (a, 1 / 61, None), (c, 1 / 62, None)]


# --- the weight table and the choice of auto --------------------------------------------------------


def test_weight_table() -> None:
    assert fusion.lexical_weight_for("hash") == 1.0 and fusion.lexical_weight_for("hash-512") == 1.0
    assert fusion.lexical_weight_for("minilm") == 0.7
    assert fusion.lexical_weight_for("st:/models/e5") == fusion.DEFAULT_LEXICAL_WEIGHT == 0.5
    assert fusion.lexical_weight_for("hash-x") == 0.5  # not a hash dimension


def test_plan_follows_the_table_and_the_minor() -> None:
    def plan(minor: int, embedder: str, **kw: Any) -> tuple[str, str | None, float | None]:
        args = {"text": True, "vector": False, "has_vectors": True, "fusion": None, "lexical_weight": None, **kw}
        r = fusion.plan(kw.pop("mode", "auto"), minor=minor, embedder=embedder,
                        **{k: v for k, v in args.items() if k != "mode"})
        return r.mode, r.fusion, r.lexical_weight

    assert plan(4, "minilm") == ("hybrid", "weighted", 0.7)
    assert plan(3, "minilm") == ("hybrid", "rrf", None)
    assert plan(4, "hash") == plan(3, "hash") == plan(4, "hash-128") == ("lexical", None, None)
    assert plan(4, "hash", mode="hybrid") == ("hybrid", "weighted", 1.0)
    assert plan(3, "hash", mode="hybrid") == ("hybrid", "rrf", None)
    assert plan(5, "st:/m") == ("hybrid", "weighted", 0.5)
    assert plan(4, "", has_vectors=True) == plan(4, "", has_vectors=False) == ("lexical", None, None)
    assert plan(4, "hash", vector=True) == ("hybrid", "weighted", 0.5)
    assert plan(4, "hash", vector=True, text=False) == ("vector", None, None)
    assert plan(3, "minilm", lexical_weight=0.2) == ("hybrid", "weighted", 0.2)
    assert plan(4, "minilm", fusion="rrf") == ("hybrid", "rrf", None)
    assert plan(4, "hash", lexical_weight=1.0) == ("lexical", None, None)


@pytest.mark.parametrize(("kw", "message"), [
    ({"fusion": "RRF"}, "fusion must be one of rrf, weighted"),
    ({"fusion": 1}, "fusion must be one of rrf, weighted"),
    ({"lexical_weight": 1.5}, "lexical weight must be a number from 0 to 1"),
    ({"lexical_weight": -0.1}, "lexical weight must be a number from 0 to 1"),
    ({"lexical_weight": float("nan")}, "lexical weight must be a number from 0 to 1"),
    ({"lexical_weight": float("inf")}, "lexical weight must be a number from 0 to 1"),
    ({"lexical_weight": True}, "lexical weight must be a number from 0 to 1"),
    ({"lexical_weight": "0.5"}, "lexical weight must be a number from 0 to 1"),
    ({"fusion": "rrf", "lexical_weight": 0.5}, "a lexical weight applies to weighted fusion, not rrf"),
    ({"mode": "lexical", "fusion": "weighted"}, "apply to hybrid search, not lexical"),
    ({"mode": "vector", "lexical_weight": 0.5}, "apply to hybrid search, not vector"),
])
def test_bad_fusion_arguments(minor4: Path, kw: dict[str, Any], message: str) -> None:
    with capsule.open(minor4) as cap, pytest.raises(capsule.UsageError, match=message):
        cap.search("deploy", **kw)


def test_fusion_needs_a_query(minor4: Path) -> None:
    with capsule.open(minor4) as cap, pytest.raises(capsule.UsageError, match="needs a query"):
        cap.search("", fusion="weighted")


# --- capsules ------------------------------------------------------------------------------------------

WORDS = ["deploy", "freeze", "friday", "vault", "key", "lunch", "noon", "garden", "pager", "rota", "incident",
         "database", "backup", "restore", "release", "train", "canary", "rollback", "budget", "invoice", "office",
         "move", "laptop", "badge"]


def texts(n: int = 60) -> list[str]:
    rng = np.random.default_rng(7)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


class Renamed:
    """The hash embedder under another name: an embedder the weight table does not know."""

    name = "fusion-test"

    def __init__(self) -> None:
        self._inner = capsule.get_embedder("hash")
        self.dim = self._inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out: np.ndarray = self._inner.embed(texts)
        return out


capsule.register_embedder("fusion-test", Renamed)


def make(path: Path, minor: int, embedder: str = "hash", monkeypatch: pytest.MonkeyPatch | None = None) -> Path:
    """A capsule of ``texts()`` with hash vectors, named ``embedder``, whose header says ``minor``."""
    import capsule.handle.entry as entry

    mp = monkeypatch or pytest.MonkeyPatch()
    mp.setattr(entry, "FileHeader", lambda fid: FileHeader(fid, minor=minor))
    try:
        emb = capsule.get_embedder("hash")
        rows = texts()
        vecs = emb.embed(rows)
        with capsule.create(path, clock=lambda: T0) as cap:
            cap.configure_vectors(dim=emb.dim, embedder=embedder)
            with cap.commit() as tx:
                for i, (t, v) in enumerate(zip(rows, vecs, strict=True)):
                    tx.remember(t, embedding=v, time=T0 + i)
    finally:
        mp.undo()
    assert path.read_bytes()[9] == minor
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fusion")
    return {"4": make(d / "m4.capsule", 4), "3": make(d / "m3.capsule", 3),
            "4-minilm": make(d / "m4-minilm.capsule", 4, "minilm"),
            "4-test": make(d / "m4-test.capsule", 4, "fusion-test"),
            "3-test": make(d / "m3-test.capsule", 3, "fusion-test")}


@pytest.fixture
def minor4(corpus: dict[str, Path]) -> Path:
    return corpus["4"]


QUERIES = ["deploy freeze", "vault key", "lunch in the garden", "incident rollback canary", "budget"]


def exact(hits: Sequence[capsule.Hit]) -> list[tuple[str, str]]:
    return [(h.id, float(h.score).hex()) for h in hits]


def test_hybrid_is_lexical_exactly_for_hash_in_a_minor_4_file(corpus: dict[str, Path]) -> None:
    with capsule.open(corpus["4"]) as cap:
        for q in QUERIES:
            lex = cap.search(q, mode="lexical", k=10)
            hyb = cap.search(q, mode="hybrid", k=10)
            auto = cap.search(q, k=10)
            assert lex and exact(hyb) == exact(lex) == exact(auto), q
            assert (hyb.ranking.mode, hyb.ranking.fusion, hyb.ranking.lexical_weight) == ("hybrid", "weighted", 1.0)
            assert auto.ranking.mode == "lexical" and "lexical weight is 1" in auto.ranking.why
    # and the same file under 1.3's rule fuses by reciprocal rank, which differs
    with capsule.open(corpus["3"]) as cap:
        rrf = [exact(cap.search(q, mode="hybrid", k=10)) for q in QUERIES]
    with capsule.open(corpus["4"]) as cap:
        assert rrf == [exact(cap.search(q, mode="hybrid", k=10, fusion="rrf")) for q in QUERIES]
        assert rrf != [exact(cap.search(q, mode="hybrid", k=10)) for q in QUERIES]


def _sides(cap: capsule.Capsule, q: str, k: int) -> tuple[list[tuple[bytes, float]], list[tuple[bytes, float]]]:
    deep = max(50, 4 * k)
    qv = capsule.get_embedder("hash").embed([q])[0]
    lex = [(bytes.fromhex(h.id), h.score) for h in cap.search(q, mode="lexical", k=deep)]
    vec = [(bytes.fromhex(h.id), h.score) for h in cap.search(vector=qv, mode="vector", k=deep)]
    return lex, vec


@pytest.mark.parametrize(("key", "kw", "w"), [
    ("4-test", {}, 0.5),  # the default weight, the query embedded by the capsule's embedder
    ("4", {"lexical_weight": 0.3}, 0.3),  # hash, a weight given
    ("4", {"vector": True}, 0.5),  # a query vector given: the default weight
    ("3-test", {"fusion": "weighted", "lexical_weight": 0.8}, 0.8),  # asked for in a 1.3 file
])
def test_weighted_search_is_the_rule_over_the_two_searches(corpus: dict[str, Path], key: str, kw: dict[str, Any],
                                                            w: float) -> None:
    """The engine fuses what lexical and vector search return, max(50, 4k) deep, by the reference rule."""
    with capsule.open(corpus[key]) as cap:
        for q in QUERIES:
            for k in (3, 10, 20):
                lex, vec = _sides(cap, q, k)
                args = {**kw, "vector": capsule.get_embedder("hash").embed([q])[0] if kw.get("vector") else None}
                got = cap.search(q, mode="hybrid", k=k, **args)
                assert (got.ranking.fusion, got.ranking.lexical_weight) == ("weighted", w)
                want = ref_weighted(lex, vec, w, k)
                assert exact(got) == [(r.hex(), s.hex()) for r, s in want], (q, k)
                assert len(got) == k


def test_auto_says_what_it_chose(corpus: dict[str, Path]) -> None:
    qv = capsule.get_embedder("hash").embed(["deploy"])[0]
    with capsule.open(corpus["4-test"]) as cap:  # an embedder the table does not name: 0.5, hybrid
        r = cap.search("deploy freeze").ranking
        assert (r.mode, r.fusion, r.lexical_weight) == ("hybrid", "weighted", 0.5), r
        assert r.why.startswith("auto:")
    with capsule.open(corpus["3-test"]) as cap:  # the same in a 1.3 file: reciprocal rank
        r = cap.search("deploy freeze").ranking
        assert (r.mode, r.fusion, r.lexical_weight) == ("hybrid", "rrf", None), r
        assert "format 1.3" in r.why
    with capsule.open(corpus["3"]) as cap:  # hash in a 1.3 file: lexical, as before
        assert cap.search("deploy freeze").ranking.mode == "lexical"
        assert cap.search("deploy freeze", lexical_weight=0.6).ranking.mode == "hybrid"
    with capsule.open(corpus["4"]) as cap:
        assert cap.search(vector=qv).ranking.mode == "vector"
        r = cap.search("deploy", vector=qv).ranking
        assert (r.mode, r.fusion, r.lexical_weight) == ("hybrid", "weighted", 0.5)
        assert cap.search("deploy", lexical_weight=0.6).ranking.lexical_weight == 0.6
        r = cap.search("deploy", fusion="rrf").ranking
        assert (r.mode, r.fusion) == ("hybrid", "rrf")
        assert cap.search("", tags=["x"]).ranking.mode == "list"
        assert cap.search("deploy", mode="vector").ranking.why == "asked for"
        # the result is still a list, and compares as one
        hits = cap.search("deploy", k=3)
        assert isinstance(hits, list) and hits == list(hits) and len(hits[:2]) == 2


@pytest.mark.skipif(bool(os.environ.get("CAPSULE_HAS_MINILM")) or
                    __import__("importlib.util").util.find_spec("sentence_transformers") is not None,
                    reason="minilm can run here")
def test_auto_falls_back_to_words_when_the_embedder_cannot_run(corpus: dict[str, Path]) -> None:
    with capsule.open(corpus["4-minilm"]) as cap:
        hits = cap.search("deploy freeze")
        assert hits.ranking.mode == "lexical" and "searched by words only" in hits.ranking.why
        assert exact(hits) == exact(cap.search("deploy freeze", mode="lexical"))
        with pytest.raises(capsule.UsageError, match="minilm"):
            cap.search("deploy freeze", mode="hybrid")


def test_a_view_from_before_a_redaction_keeps_the_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = make(tmp_path / "r.capsule", 4, "fusion-test", monkeypatch)
    with capsule.open(p, "a") as cap:
        first = cap.search("deploy freeze", k=3)
        before = cap.log()[-1].seq
        with cap.commit() as tx:
            tx.redact(first[0].id, reason="test")
        with cap.view(before) as old:  # 7.7.1: the view still hides the redacted record
            again = old.search("deploy freeze", k=3)
        assert first[0].id not in [h.id for h in again] and len(again) == 3
        assert again.ranking == first.ranking and again.ranking.fusion == "weighted"


# --- files of minor <= 3 rank as before --------------------------------------------------------------


# every golden search vector of minor <= 3: v1.1, v1.2 and today's (or v1.3 once writers write 1.4)
OLD_SEARCH = [f for f in ("v1.1", "v1.2", "v1.3", ".")
              if (VEC / f / "search.capsule").exists() and (VEC / f / "search.capsule").read_bytes()[9] <= 3]


@pytest.mark.parametrize("folder", OLD_SEARCH)
def test_old_files_fuse_by_rrf_byte_for_byte(folder: str) -> None:
    path = VEC / folder / "search.capsule"
    want = json.loads((VEC / folder / "vectors.json").read_text())["search"]
    q = want["queries"]["hybrid"]
    with capsule.open(path) as cap:
        assert int(cap.format_version.split(".")[1]) <= 3
        for kw in ({}, {"fusion": "rrf"}):
            hits = cap.search(q["query"], vector=q["vector"], k=q["k"], mode="hybrid", **kw)
            assert [[h.id, h.score] for h in hits] == want["hybrid"]
            assert [float(h.score).hex() for h in hits] == [float(s).hex() for _, s in want["hybrid"]]
            assert hits.ranking.fusion == "rrf"
        # asking for the weighted rule works on any file, and ranks otherwise
        w = cap.search(q["query"], vector=q["vector"], k=q["k"], mode="hybrid", fusion="weighted")
        assert w.ranking.lexical_weight == 0.5 and [h.score for h in w] != [s for _, s in want["hybrid"]]


def test_searcher_reads_the_minor_from_the_header(corpus: dict[str, Path]) -> None:
    with capsule.open(corpus["4"]) as cap:
        assert isinstance(cap._search.searcher(), Searcher)
        assert cap._search.searcher().store.snap.header.minor == 4 and cap.format_version == "1.4"


# --- the CLI ---------------------------------------------------------------------------------------------


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**env, "COLUMNS": "200"}, timeout=120, check=False)


@pytest.fixture
def copies(corpus: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, Path]]:
    out = {k: tmp_path / p.name for k, p in corpus.items()}
    for k, p in corpus.items():
        shutil.copy(p, out[k])
    yield out


def test_cli_explain_json_in_a_fresh_process(copies: dict[str, Path], tmp_path: Path) -> None:
    r = cli("search", copies["4"], "deploy freeze", "--explain", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"mode", "fusion", "lexical_weight", "why", "hits"}
    assert (doc["mode"], doc["fusion"], doc["lexical_weight"]) == ("lexical", None, None)
    assert "lexical weight is 1" in doc["why"]
    with capsule.open(copies["4"]) as cap:
        assert doc["hits"] == [h.to_dict() for h in cap.search("deploy freeze")]
    plain = cli("search", copies["4"], "deploy freeze", "--json", cwd=tmp_path)
    # without --explain: the list, as before, each hit saying the mode auto chose
    assert json.loads(plain.stdout) == [{**h, "mode": "lexical"} for h in doc["hits"]]
    # a query vector and a text: auto fuses them, by the default weight
    qv = capsule.get_embedder("hash").embed(["deploy"])[0]
    np.save(tmp_path / "q.npy", qv)
    r = cli("search", copies["4"], "deploy freeze", "--vector", tmp_path / "q.npy", "--explain", "--json", "-k", "4",
            cwd=tmp_path)
    doc = json.loads(r.stdout)
    assert (doc["mode"], doc["fusion"], doc["lexical_weight"]) == ("hybrid", "weighted", 0.5)
    assert doc["why"].startswith("auto: a query vector and a query text")
    with capsule.open(copies["4"]) as cap:
        want = exact(cap.search("deploy freeze", vector=np.load(tmp_path / "q.npy"), k=4))
    assert [(h["id"], float(h["score"]).hex()) for h in doc["hits"]] == want
    # the capsule's embedder cannot run here (or is unknown to this process): words, and a warning
    r = cli("search", copies["4-test"], "deploy freeze", "--explain", "--json", cwd=tmp_path)
    doc = json.loads(r.stdout)
    assert doc["mode"] == "lexical" and "searched by words only" in doc["why"] and "fusion-test" in r.stderr
    r = cli("search", copies["4"], "deploy freeze", "--fusion", "rrf", "--explain", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip().splitlines() == [
        "capsule: ranked by hybrid: auto: a fusion was asked for; reciprocal rank fusion (asked for)"]
    r = cli("search", copies["4"], "deploy", "--mode", "hybrid", "--lexical-weight", "0.25", "--json", "--explain",
            cwd=tmp_path)
    doc = json.loads(r.stdout)
    assert (doc["mode"], doc["fusion"], doc["lexical_weight"]) == ("hybrid", "weighted", 0.25)


@pytest.mark.parametrize(("args", "message"), [
    (["--fusion", "borda"], "fusion must be one of rrf, weighted, not 'borda'"),
    (["--lexical-weight", "1.5"], "lexical weight must be a number from 0 to 1, not 1.5"),
    (["--lexical-weight", "nan"], "lexical weight must be a number from 0 to 1, not nan"),
    (["--lexical-weight", "-0"], None),  # 0 is allowed: vectors only
    (["--lexical-weight", "much"], "Invalid value for '--lexical-weight'"),
    (["--fusion", "rrf", "--lexical-weight", "0.5"], "a lexical weight applies to weighted fusion, not rrf"),
    (["--mode", "lexical", "--fusion", "weighted"], "apply to hybrid search, not lexical"),
    (["--mode", "vector", "--lexical-weight", "0.2"], "apply to hybrid search, not vector"),
])
def test_cli_fusion_errors_are_one_line_exit_2(copies: dict[str, Path], tmp_path: Path, args: list[str],
                                               message: str | None) -> None:
    r = cli("search", copies["4"], "deploy", *args, cwd=tmp_path)
    if message is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_help_names_the_options(tmp_path: Path) -> None:
    r = cli("search", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for opt in ("--fusion", "--lexical-weight", "--explain"):
        assert opt in r.stdout


def test_a_query_embedder_other_than_the_capsules_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors made by one embedder and a query embedded by another of the same dimension are
    not comparable: a one-line error (CLI exit 2), not quietly meaningless results."""
    p = tmp_path / "h.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(dim=384, embedder="hash")
        with cap.commit() as tx:
            tx.remember("deploy the vault", embedding=capsule.get_embedder("hash").embed(["deploy the vault"])[0])
        from capsule.search import embed as _embed

        monkeypatch.setitem(_embed._REGISTRY, "other384", lambda: capsule.HashEmbedder(384))
        with pytest.raises(capsule.UsageError, match="made by hash; a query embedded by other384"):
            cap.search("vault", mode="vector", embedder="other384")
        assert cap.search("vault", mode="vector", embedder="hash")[0].text == "deploy the vault"
    r = cli("search", p, "vault", "--mode", "hybrid", "--embedder", "e5-small", cwd=tmp_path)
    assert r.returncode == 2 and "made by hash" in r.stderr and len(r.stderr.strip().splitlines()) == 1
