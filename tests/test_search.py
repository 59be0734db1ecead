"""Search (spec 16): recall, determinism, crash safety, edge cases and a model.

What is promised (capsule/_search.py, capsule/_vindex.py, spec 16) and how each
promise is checked here:

* **Recall.** Through the HNSW path (``EXACT_BELOW`` patched low, a spy proves
  the graph was walked) the top 10 agree with an exact numpy search over the
  same filtered set on >= 95% of the entries, and every score is the exact
  cosine (16.6).
* **Determinism.** The same records give the same ids, order and scores (bit
  for bit) after reopening, from a copy in another directory, and in other
  processes with other ``PYTHONHASHSEED`` values, including a capsule whose
  index is a snapshot plus newer records inserted on open (16.3).
* **Crash safety.** A writer SIGKILLed after its commits but before its next
  snapshot, and a file torn in the middle of its newest snapshot blob, lose no
  committed record from vector or lexical search.
* **Edges.** Dimension checks, empty capsules, huge queries, k, filters, ttl,
  rollbacks, corrupt snapshots, ties, and the ``capsule search`` CLI contract.
* **Model.** A hypothesis test drives random commits, snapshots, reopens,
  checkpoints and rollbacks and compares every exact vector search with a
  brute-force model. Its vectors lie on a lattice whose cosines are exact in
  float32, so ties are common and must go to the smaller record id.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from capsule_cli.main import app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

import capsule
from capsule.core import constants as C
from capsule.search import vindex as _vindex

T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z
SEC = 10**9
CAPSULE_BIN = Path(sys.executable).with_name("capsule")
ERROR_PREFIX = "capsule: error:"
HIT_KEYS = {"id", "score", "kind", "text", "tags", "meta", "time"}

runner = CliRunner()


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # SOURCE_DATE_EPOCH fixes clocks and file ids; colour forcing changes CLI output bytes.
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def fixed_clock() -> int:
    return T0


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE", "PYTHONHASHSEED")}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_py(script: str, *args: str | Path, cwd: Path, env: dict[str, str] | None = None,
           ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env or child_env(),
                       capture_output=True, text=True, timeout=120, check=False)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def assert_no_crash(result: Result) -> None:
    """A non-SystemExit exception in-process is a traceback on a real terminal."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {exc!r}\n{result.output}"


def assert_one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    return lines[0]


def run_capsule(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The real console script, as a user runs it."""
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, input=b"", capture_output=True,
                          env=child_env(), timeout=120, check=False)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (the exact cosine the spec promises)."""
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ranked(hits: Sequence[capsule.Hit]) -> list[tuple[str, str]]:
    """Ids and scores, the scores bit-exact."""
    return [(h.id, float(h.score).hex()) for h in hits]


def own_rank(cap: capsule.Capsule, vector: np.ndarray, want: str) -> int:
    hits = cap.search(vector=vector, k=3, mode="vector")
    ids = [h.id for h in hits]
    return ids.index(want) + 1 if want in ids else -1


class KnnSpy:
    """Stands in for the hnswlib graph and counts graph walks."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.calls = 0

    def knn_query(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.graph.knn_query(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.graph, name)


def spy_on_graph(cap: capsule.Capsule) -> KnnSpy:
    cap.build_index()
    vi = cap._search.searcher().vi
    assert vi is not None and vi._hnsw is not None
    spy = KnnSpy(vi._hnsw)
    vi._hnsw = spy
    return spy


def blob_frames(path: Path, first: int) -> list[tuple[int, int]]:
    """(offset, total length) of the consecutive BLOB frames starting at ``first``."""
    data = path.read_bytes()
    out = []
    off = first
    while off + C.FRAME_HEADER_SIZE <= len(data):
        total, ftype = struct.unpack_from("<IB", data, off)
        if ftype != C.FT_BLOB:
            break
        out.append((off, total))
        off += total
    return out


# --- 1. recall through the HNSW path -----------------------------------------------------

N_CLUSTERED, DIM_CLUSTERED = 5000, 32


@dataclass
class Clustered:
    path: Path
    x: np.ndarray  # float32, as given to remember()
    u: np.ndarray  # float64 unit rows
    ids: list[str]
    tags: list[tuple[str, ...]]
    tiers: np.ndarray
    times: np.ndarray
    centers: np.ndarray


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> Clustered:
    """5,000 x 32 around 50 gaussian centres; ~30% tagged "common", ~1% "rare"."""
    rng = np.random.default_rng(20240601)
    centers = rng.normal(size=(50, DIM_CLUSTERED))
    x = (centers[rng.integers(0, 50, N_CLUSTERED)]
         + 0.35 * rng.normal(size=(N_CLUSTERED, DIM_CLUSTERED))).astype(np.float32)
    common = rng.random(N_CLUSTERED) < 0.30
    rare = rng.random(N_CLUSTERED) < 0.01
    tiers = rng.choice(np.array(["scratch", "working", "validated"]), N_CLUSTERED)
    tags = [tuple(sorted((["common"] if c else []) + (["rare"] if r else []))) for c, r in zip(common, rare, strict=True)]
    times = T0 + np.arange(N_CLUSTERED, dtype=np.int64) * SEC
    path = tmp_path_factory.mktemp("clustered") / "clustered.capsule"
    ids = []
    with capsule.create(path, clock=fixed_clock) as cap, cap.commit() as tx:
        for i in range(N_CLUSTERED):
            ids.append(tx.remember(f"point {i}", embedding=x[i], tags=list(tags[i]), tier=str(tiers[i]),
                                   time=int(times[i])))
    return Clustered(path, x, unit(x), ids, tags, tiers, times, centers)


def exact_top(c: Clustered, q: np.ndarray, allowed: np.ndarray, k: int = 10) -> tuple[list[str], np.ndarray]:
    s = c.u @ unit(q)
    idx = np.flatnonzero(allowed)
    order = sorted(idx, key=lambda i: (-s[i], c.ids[i]))[:k]
    return [c.ids[i] for i in order], s


RECALL_FILTERS: dict[str, tuple[dict[str, Any], Callable[[Clustered], np.ndarray]]] = {
    "none": ({}, lambda c: np.ones(N_CLUSTERED, bool)),
    "tag-30pct": ({"tags": "common"}, lambda c: np.array(["common" in t for t in c.tags])),
    "tier": ({"tier": "validated"}, lambda c: c.tiers == "validated"),
    "time-range": ({"since": T0 + 1000 * SEC, "until": T0 + 2999 * SEC},
                   lambda c: (c.times >= T0 + 1000 * SEC) & (c.times <= T0 + 2999 * SEC)),
    "time-range-iso": ({"since": "2023-11-14T22:30:00Z", "until": "2023-11-14T23:00:00Z"},
                       lambda c: (c.times >= T0 + 1000 * SEC) & (c.times <= T0 + 2800 * SEC)),
    "selective-1pct": ({"tags": "rare"}, lambda c: np.array(["rare" in t for t in c.tags])),
    "tier-and-tag": ({"tier": ["scratch", "working"], "any_tags": ["common", "rare"]},
                     lambda c: (c.tiers != "validated") & np.array([bool(t) for t in c.tags])),
}


@pytest.mark.parametrize("name", sorted(RECALL_FILTERS))
def test_recall_at_10_through_hnsw_matches_exact_numpy(clustered: Clustered, name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    kw, allowed_of = RECALL_FILTERS[name]
    allowed = allowed_of(clustered)
    assert 30 < allowed.sum() <= N_CLUSTERED, "setup: the filter should pass some but not too few"
    monkeypatch.setattr(_vindex, "EXACT_BELOW", 8)  # even the 1% filter (~50 entries) walks the graph
    rng = np.random.default_rng(7)
    queries = clustered.centers[rng.integers(0, 50, 60)] + 0.2 * rng.normal(size=(60, DIM_CLUSTERED))
    with capsule.open(clustered.path) as cap:
        spy = spy_on_graph(cap)
        recalls = []
        for q in queries:
            hits = cap.search(vector=q, k=10, mode="vector", **kw)
            want, s = exact_top(clustered, q, allowed)
            assert len(hits) == len(want)
            got = [h.id for h in hits]
            recalls.append(len(set(got) & set(want)) / len(want))
            for h in hits:
                i = clustered.ids.index(h.id)
                assert allowed[i], f"{h.id} does not pass the filter {kw}"
                assert h.score == pytest.approx(s[i], abs=1e-6), "scores are the exact cosine (16.6)"
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert spy.calls >= len(queries), "the HNSW graph was not used: this test measured the exact scan"
    assert float(np.mean(recalls)) >= 0.95, f"recall@10 {np.mean(recalls):.3f} with filter {name}"


def test_exact_scan_is_exact_on_the_clustered_set(clustered: Clustered) -> None:
    """Default EXACT_BELOW (20,000 > 5,000): every answer equals numpy's, ids and order."""
    rng = np.random.default_rng(8)
    allowed = np.array(["common" in t for t in clustered.tags])
    with capsule.open(clustered.path) as cap:
        spy = spy_on_graph(cap)
        for q in clustered.centers[:10] + 0.2 * rng.normal(size=(10, DIM_CLUSTERED)):
            want, _ = exact_top(clustered, q, allowed, k=25)
            assert [h.id for h in cap.search(vector=q, k=25, mode="vector", tags="common")] == want
        assert spy.calls == 0


# --- 2. identical results across reopen, copies and processes ------------------------------

DIM_LAYERED = 16
WORDS = ("deploy", "freeze", "vault", "key", "lunch", "noon", "metric", "units", "server", "build",
         "alpha", "beta", "gamma", "delta", "cache", "queue")

ANSWER_SCRIPT = r"""
import json, sys
import numpy as np
import capsule
from capsule.search import vindex as _vindex
path, queries, exact_below = sys.argv[1], json.loads(open(sys.argv[2]).read()), int(sys.argv[3])
_vindex.EXACT_BELOW = exact_below
out = []
with capsule.open(path) as cap:
    for q in queries:
        q = dict(q)
        if q.get("vector") is not None:
            q["vector"] = np.array(q["vector"], np.float64)
        out.append([[h.id, float(h.score).hex()] for h in cap.search(**q)])
    info = cap.index_info()
print(json.dumps({"answers": out, "snapshot": info["snapshot"]["vectors"], "indexed": info["indexed"]}))
"""


@dataclass
class Layered:
    path: Path
    queries: list[dict[str, Any]]
    snapshot_vectors: int
    total: int


def answers(cap: capsule.Capsule, queries: Sequence[dict[str, Any]]) -> list[list[list[str]]]:
    out = []
    for q in queries:
        q = dict(q)
        if q.get("vector") is not None:
            q["vector"] = np.array(q["vector"], np.float64)
        out.append([list(p) for p in ranked(cap.search(**q))])
    return out


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> Layered:
    """2,000 vectors in a snapshot, then 200 newer ones no snapshot holds (16.3): fewer
    than 256, so no close policy snapshots them."""
    rng = np.random.default_rng(99)
    emb = capsule.get_embedder("hash-16")
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7)))) + f" item{i}" for i in range(2200)]
    x = emb.embed(texts) + 0.05 * rng.normal(size=(2200, DIM_LAYERED)).astype(np.float32)
    tags = [["even"] if i % 2 == 0 else ["odd"] for i in range(2200)]
    path = tmp_path_factory.mktemp("layered") / "layered.capsule"
    with capsule.create(path, clock=fixed_clock) as cap:
        cap.configure_vectors(dim=DIM_LAYERED, embedder="hash-16")
        with cap.commit() as tx:
            for i in range(2000):
                tx.remember(texts[i], embedding=x[i], tags=tags[i], time=T0 + i * SEC)
        assert cap.save_index()
    with capsule.open(path, "a", clock=fixed_clock) as cap:  # a writer that never searches
        for lo in (2000, 2100):
            with cap.commit() as tx:
                for i in range(lo, lo + 100):
                    tx.remember(texts[i], embedding=x[i], tags=tags[i], time=T0 + i * SEC)
        with cap.commit() as tx:
            tx.note("a note about the deploy freeze")
            tx.decide("freeze deploys on friday", rationale="the vault key rotates on friday")
    queries: list[dict[str, Any]] = []
    for _ in range(6):
        v = (x[int(rng.integers(0, 2200))] + 0.3 * rng.normal(size=DIM_LAYERED)).tolist()
        queries.append({"vector": v, "k": 12, "mode": "vector"})
        queries.append({"vector": v, "k": 12, "mode": "vector", "tags": "even", "until": T0 + 2150 * SEC})
    queries += [
        {"query": "deploy freeze vault", "k": 15, "mode": "lexical"},
        {"query": "lunch noon", "k": 15, "mode": "lexical", "any_tags": ["odd"]},
        {"query": "metric units server", "k": 15, "mode": "hybrid"},
        {"query": "cache queue", "k": 15},  # auto: hybrid (the vectors name an embedder)
        {"query": "build", "vector": x[2199].tolist(), "k": 15, "mode": "hybrid"},
    ]
    return Layered(path, queries, 2000, 2200)


@pytest.mark.parametrize("exact_below", [20_000, 50], ids=["exact", "hnsw"])
def test_results_identical_after_reopen_copy_and_in_other_processes(
        layered: Layered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_below: int) -> None:
    monkeypatch.setattr(_vindex, "EXACT_BELOW", exact_below)
    qfile = tmp_path / "queries.json"
    qfile.write_text(json.dumps(layered.queries))
    with capsule.open(layered.path) as cap:
        first = answers(cap, layered.queries)
        info = cap.index_info()
        assert info["snapshot"]["vectors"] == layered.snapshot_vectors, "setup: newer records not in a snapshot"
        assert info["indexed"] == layered.total and info["doubt"] is None
    assert all(first), "every query should find something"
    with capsule.open(layered.path) as cap:
        assert answers(cap, layered.queries) == first, "reopen"
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    copy = elsewhere / "copied.capsule"
    shutil.copyfile(layered.path, copy)
    with capsule.open(copy) as cap:
        assert answers(cap, layered.queries) == first, "a copy in another directory"
    for seed, target, cwd in (("1", layered.path, tmp_path), ("2", copy, elsewhere), ("random", copy, tmp_path)):
        r = run_py(ANSWER_SCRIPT, target, qfile, exact_below, cwd=cwd, env=child_env(PYTHONHASHSEED=seed))
        got = json.loads(r.stdout)
        assert got["snapshot"] == layered.snapshot_vectors and got["indexed"] == layered.total
        assert got["answers"] == first, f"another process (PYTHONHASHSEED={seed}) answered differently"


def test_writer_answers_equal_reader_answers_after_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that searches between commits grows its graph piecewise; its close
    writes the snapshot (>= 256 new vectors), and a reader loading it answers the same."""
    monkeypatch.setattr(_vindex, "EXACT_BELOW", 20)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    qs = rng.normal(size=(8, 16))
    p = tmp_path / "w.capsule"
    with capsule.create(p, clock=fixed_clock) as cap:
        for lo in (0, 500, 900, 1000):
            with cap.commit() as tx:
                for i in range(lo, {0: 500, 500: 900, 900: 1000, 1000: 1500}[lo]):
                    tx.remember(f"w{i}", embedding=x[i], tags=["t"] if i % 3 else [], time=T0 + i)
            cap.search(vector=qs[0], mode="vector")  # the writer's index follows every commit
        writer = [ranked(cap.search(vector=q, k=10, mode="vector")) for q in qs]
        writer += [ranked(cap.search(vector=q, k=10, mode="vector", tags="t")) for q in qs]
    with capsule.open(p) as cap:
        assert cap.index_info()["snapshot"]["vectors"] == 1500, "close writes the snapshot (16.3)"
        reader = [ranked(cap.search(vector=q, k=10, mode="vector")) for q in qs]
        reader += [ranked(cap.search(vector=q, k=10, mode="vector", tags="t")) for q in qs]
    assert reader == writer


def test_close_snapshots_when_256_vectors_are_unsnapshotted(tmp_path: Path) -> None:
    """16.3: "The reference writer snapshots on close when 256 or more entries are
    not in the newest snapshot" - also when the writer never searched."""
    p = tmp_path / "s.capsule"
    rng = np.random.default_rng(1)
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(300):
            tx.remember(f"m{i}", embedding=rng.normal(size=8))
    with capsule.open(p) as cap:
        snap = cap.index_info()["snapshot"]
        assert snap is not None and snap["vectors"] == 300, f"no snapshot written on close: {snap}"


def test_close_does_not_snapshot_below_256(tmp_path: Path) -> None:
    p = tmp_path / "s.capsule"
    rng = np.random.default_rng(1)
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(255):
                tx.remember(f"m{i}", embedding=rng.normal(size=8))
        cap.build_index()
    with capsule.open(p) as cap:
        assert cap.index_info()["snapshot"] is None


def test_snapshot_after_a_commit_past_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import capsule.search.part as capmod

    monkeypatch.setattr(capmod, "SNAPSHOT_EVERY", 100)
    p = tmp_path / "t.capsule"
    rng = np.random.default_rng(2)
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(50):
                tx.remember(f"a{i}", embedding=rng.normal(size=8))
        cap.build_index()
        assert cap.index_info()["snapshot"] is None
        with cap.commit() as tx:
            for i in range(120):
                tx.remember(f"b{i}", embedding=rng.normal(size=8))
        snap = cap.index_info()["snapshot"]
        assert snap is not None and snap["vectors"] == 170, "a commit past max(threshold, count) snapshots"


# --- 3. crashes ------------------------------------------------------------------------------

CRASHER = r"""
import json, os, signal, sys
import numpy as np
import capsule
path, vecs = sys.argv[1], np.load(sys.argv[2])
T0 = 1_700_000_000 * 10**9
cap = capsule.create(path, clock=lambda: T0)

def batch(lo, hi):
    with cap.commit() as tx:
        ids = [tx.remember(f"tok{i:05d} shared words", embedding=vecs[i], time=T0 + i) for i in range(lo, hi)]
    print("ACK", json.dumps(ids), flush=True)

batch(0, 300)
assert cap.save_index()
batch(300, 400)
cap.search(vector=vecs[0], mode="vector")  # the writer's index is live: its close would snapshot
batch(400, 500)
batch(500, 600)
os.kill(os.getpid(), signal.SIGKILL)
print("UNREACHABLE", flush=True)
"""


def assert_all_searchable(path: Path, ids: Sequence[str], x: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                          mode: str = "r") -> None:
    """Every id is rank 1 for its own vector (exact scan and graph) and its own token."""
    for below in (20_000, 0):
        monkeypatch.setattr(_vindex, "EXACT_BELOW", below)
        with capsule.open(path, mode) as cap:  # type: ignore[arg-type]
            missed = [i for i, rid in enumerate(ids) if own_rank(cap, x[i], rid) != 1]
            assert not missed, f"EXACT_BELOW={below}: {len(missed)} records not found, first {missed[:5]}"
    with capsule.open(path) as cap:
        for i, rid in enumerate(ids):
            hits = cap.search(f"tok{i:05d}", mode="lexical", k=2)
            assert [h.id for h in hits][:1] == [rid], f"lexical search lost record {i}"


def test_sigkill_after_commits_before_snapshot_loses_no_searchable_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(11).normal(size=(600, 16)).astype(np.float32)
    np.save(tmp_path / "vecs.npy", x)
    p = tmp_path / "killed.capsule"
    r = run_py(CRASHER, p, tmp_path / "vecs.npy", cwd=tmp_path, ok=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "UNREACHABLE" not in r.stdout
    ids = [rid for line in r.stdout.splitlines() if line.startswith("ACK ") for rid in json.loads(line[4:])]
    assert len(ids) == 600 and len(set(ids)) == 600
    assert capsule.verify(p).ok
    with capsule.open(p) as cap:
        assert cap.kinds()["memory"] == 600
        assert cap.index_info()["snapshot"]["vectors"] == 300, "setup: the kill must precede the next snapshot"
    assert_all_searchable(p, ids, x, monkeypatch)
    # A writer that opens it next indexes the rest and snapshots on close (300 >= 256 new).
    with capsule.open(p, "a") as cap:
        assert cap.build_index() == 600
    with capsule.open(p) as cap:
        assert cap.index_info()["snapshot"]["vectors"] == 600
    assert_all_searchable(p, ids, x, monkeypatch)
    assert capsule.verify(p).ok


@pytest.fixture(scope="module")
def two_snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], np.ndarray, int, int]:
    """300 memories, snapshot 1, 300 more, snapshot 2. Returns (path, ids, vectors, blob1, blob2)."""
    x = np.random.default_rng(12).normal(size=(600, 16)).astype(np.float32)
    p = tmp_path_factory.mktemp("torn") / "full.capsule"
    ids = []
    with capsule.create(p, clock=fixed_clock) as cap:
        for lo in (0, 300):
            with cap.commit() as tx:
                ids += [tx.remember(f"tok{i:05d} shared words", embedding=x[i], time=T0 + i)
                        for i in range(lo, lo + 300)]
            assert cap.save_index()
            if lo == 0:
                blob1 = cap.index_info()["snapshot"]["offset"]
        blob2 = cap.index_info()["snapshot"]["offset"]
    assert blob1 < blob2
    return p, ids, x, blob1, blob2


def cut_points(path: Path, blob: int) -> dict[str, int]:
    frames = blob_frames(path, blob)
    assert frames, "setup: no BLOB frame at the snapshot offset"
    end_of_blob = frames[-1][0] + frames[-1][1]
    size = path.stat().st_size
    return {
        "in-blob-header": blob + 10,
        "in-blob-payload": blob + C.FRAME_HEADER_SIZE + 1000,
        "last-byte-of-blob": end_of_blob - 1,
        "after-blob-before-index": end_of_blob + 5,
        "last-byte-of-file": size - 1,
    }


@pytest.mark.parametrize("where", ["in-blob-header", "in-blob-payload", "last-byte-of-blob",
                                   "after-blob-before-index", "last-byte-of-file"])
def test_torn_tail_inside_the_newest_snapshot_loses_nothing(
        two_snapshots: tuple[Path, list[str], np.ndarray, int, int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    full, ids, x, blob1, blob2 = two_snapshots
    cut = cut_points(full, blob2)[where]
    p = tmp_path / "torn.capsule"
    p.write_bytes(full.read_bytes()[:cut])
    rep = capsule.verify(p)
    assert rep.ok and rep.torn_tail > 0, "a tear is a torn tail, not damage"
    with capsule.open(p) as cap:
        info = cap.index_info()
        assert info["snapshot"]["offset"] == blob1, "the torn snapshot must not be used"
        assert cap.build_index() == 600
        assert cap.index_info()["doubt"] is None
    assert_all_searchable(p, ids, x, monkeypatch)
    # A writer recovers the tail; its close snapshots again and the file verifies.
    with capsule.open(p, "a") as cap:
        assert cap.build_index() == 600
    assert capsule.verify(p).ok and capsule.verify(p).torn_tail == 0
    with capsule.open(p) as cap:
        assert cap.index_info()["snapshot"]["vectors"] == 600
    assert_all_searchable(p, ids, x, monkeypatch)


# --- 4. edge cases ---------------------------------------------------------------------------


def test_dimension_mismatch_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("first", embedding=[1.0, 0.0, 0.0])
        before = p.read_bytes()
        with pytest.raises(capsule.InvalidRecordError, match=r"dimension 2.*3"), cap.commit() as tx:
            tx.remember("fine, but in a doomed commit", embedding=[0.0, 1.0, 0.0])
            tx.remember("second", embedding=[1.0, 0.0])
        with pytest.raises(capsule.InvalidRecordError, match="dimension"), cap.commit() as tx:
            tx.put_value({"text": "from jsonl", "embedding": [1.0, 2.0, 3.0, 4.0]})
        with pytest.raises(capsule.InvalidRecordError, match="dimension"), cap.commit() as tx:
            tx.put(capsule.Memory.build(text="a record object", time=T0, embedding=[1.0]))
        assert p.read_bytes() == before
        assert [r.text for r in cap.records("memory")] == ["first"]
    assert p.read_bytes() == before


def test_dimension_mismatch_after_reopen(tmp_path: Path) -> None:
    """The first embedding's dimension governs (16.1) for every later writer too."""
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("first", embedding=[1.0, 0.0, 0.0])
    before = p.read_bytes()
    with (capsule.open(p, "a") as cap, pytest.raises(capsule.InvalidRecordError, match="dimension"),
          cap.commit() as tx):
        tx.remember("second", embedding=[1.0, 0.0])
    assert p.read_bytes() == before
    with capsule.open(p) as cap:
        assert cap.vector_config().dim == 3  # type: ignore[union-attr]


def test_dimension_mismatch_in_the_first_commit(tmp_path: Path) -> None:
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        before = p.read_bytes()
        with pytest.raises(capsule.InvalidRecordError, match="dimension"), cap.commit() as tx:
            tx.remember("a", embedding=[1.0, 0.0])
            tx.remember("b", embedding=[1.0, 0.0, 0.0])
        assert p.read_bytes() == before
        assert cap.vector_config() is None, "a refused commit fixes nothing"
        with cap.commit() as tx:
            tx.remember("c", embedding=[1.0, 0.0, 0.0])
        assert cap.vector_config().dim == 3  # type: ignore[union-attr]


def test_configured_dimension_is_enforced(tmp_path: Path) -> None:
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(dim=4, space="cosine", M=8)
        before = p.read_bytes()
        with pytest.raises(capsule.InvalidRecordError), cap.commit() as tx:
            tx.remember("x", embedding=[1.0, 2.0])
        assert p.read_bytes() == before
        with pytest.raises(capsule.UsageError):
            cap.configure_vectors(dim=8)


@pytest.mark.parametrize("vector", [[1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [[1.0, 0.0, 0.0]] * 2, "abc"],
                         ids=["too-short", "too-long", "matrix", "text"])
def test_query_vector_of_the_wrong_shape_is_a_usage_error(tmp_path: Path, vector: Any) -> None:
    p = tmp_path / "q.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("x", embedding=[1.0, 0.0, 0.0])
        with pytest.raises(capsule.UsageError):
            cap.search(vector=vector, mode="vector")


def test_query_vector_nan_or_zero_is_a_usage_error(tmp_path: Path) -> None:
    p = tmp_path / "q.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("x", embedding=[1.0, 0.0, 0.0])
        for bad in ([float("nan"), 0.0, 0.0], [math.inf, 0.0, 0.0], [0.0, 0.0, 0.0]):
            with pytest.raises(capsule.UsageError):
                cap.search(vector=bad, mode="vector")


def test_empty_capsule(tmp_path: Path) -> None:
    """Lexical and auto: []. A vector query with no index: [] (no dimension to check
    against). A text query that needs an embedding: UsageError naming --mode lexical."""
    p = tmp_path / "e.capsule"
    with capsule.create(p) as cap:
        assert cap.search("anything", mode="lexical") == []
        assert cap.search("anything") == []
        assert cap.search(vector=[1.0, 2.0], mode="vector") == []
        with pytest.raises(capsule.UsageError, match="no vectors"):
            cap.search("anything", mode="vector")
        with pytest.raises(capsule.UsageError, match="no vectors"):
            cap.search("anything", mode="hybrid")
        assert cap.search() == []  # no query and no vector: a listing (16.6), empty here
        assert cap.index_info() == {"vectors": None, "indexed": None, "snapshot": None, "doubt": None,
                                    "notice": None, "lexical": {"indexed": 0, "snapshot": None}}
    # memories, but none with an embedding
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:
            tx.remember("plain text only")
        assert cap.search(vector=[1.0, 2.0], mode="vector") == []
        assert [h.text for h in cap.search("plain")] == ["plain text only"]


def test_a_query_longer_than_any_memory(tmp_path: Path) -> None:
    p = tmp_path / "long.capsule"
    emb = capsule.get_embedder("hash")
    texts = ["the deploy key lives in vault", "lunch is at noon", "prefer metric units"]
    with capsule.create(p) as cap:
        cap.configure_vectors(dim=emb.dim, embedder=emb.name)
        with cap.commit() as tx:
            ids = [tx.remember(t, embedding=emb.embed([t])[0]) for t in texts]
        rng = np.random.default_rng(3)
        filler = [f"w{int(n)}" for n in rng.integers(0, 5000, 10_000)]
        query = " ".join(filler[:5000] + ["vault", "deploy"] + filler[5000:])
        assert len(query.split()) == 10_002
        for mode in ("lexical", "hybrid", "vector", "auto"):
            hits = cap.search(query, mode=mode, k=3)
            assert hits, mode
            if mode != "vector":
                assert hits[0].id == ids[0], mode
        assert [h.id for h in cap.search(query, mode="lexical")] == [ids[0]]


def test_k_larger_than_the_number_of_records(tmp_path: Path) -> None:
    p = tmp_path / "k.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"alpha {i}", embedding=[1.0, float(i)]) for i in range(5)]
        assert sorted(h.id for h in cap.search(vector=[1.0, 0.0], k=10_000, mode="vector")) == sorted(ids)
        assert sorted(h.id for h in cap.search("alpha", k=50, mode="lexical")) == sorted(ids)
        assert len(cap.search("alpha", vector=[1.0, 0.0], k=50, mode="hybrid")) == 5
        for bad in (0, -1, 10_001, 2.0, True):
            with pytest.raises(capsule.UsageError):
                cap.search("alpha", k=bad)  # type: ignore[arg-type]
        with pytest.raises(capsule.UsageError):
            cap.search("alpha", mode="bogus")


@pytest.fixture
def tagged(tmp_path: Path) -> Iterator[tuple[capsule.Capsule, dict[str, str]]]:
    p = tmp_path / "tags.capsule"
    with capsule.create(p, clock=fixed_clock) as cap:
        with cap.commit() as tx:
            ids = {
                "ab": tx.remember("topic one", tags=["a", "b"], embedding=[1.0, 0.0], meta={"n": 1, "s": "x"},
                                  time=T0 - 3 * SEC),
                "a": tx.remember("topic two", tags=["a"], embedding=[0.9, 0.1], meta={"n": 2, "s": "x"},
                                 tier="validated", time=T0 - 2 * SEC),
                "b": tx.remember("topic three", tags=["b"], embedding=[0.8, 0.2], meta={"n": True, "s": "1"},
                                 tier="scratch", time=T0 - 1 * SEC),
                "none": tx.remember("topic four", embedding=[0.7, 0.3], meta={"n": 1.0}, time=T0),
                "c": tx.remember("topic five", tags=["c"], embedding=[0.6, 0.4], meta={"s": "caf\u00e9"},
                                 time=T0 + SEC),
            }
        yield cap, ids


def found(cap: capsule.Capsule, **kw: Any) -> dict[str, set[str]]:
    """The ids each search mode returns for ``kw`` (all modes must agree on the set)."""
    return {mode: {h.id for h in cap.search("topic", vector=[1.0, 0.0] if mode != "lexical" else None,
                                             mode=mode, k=100, **kw)}
            for mode in ("lexical", "vector", "hybrid")}


@pytest.mark.parametrize(("kw", "want"), [
    ({}, {"ab", "a", "b", "none", "c"}),
    ({"tags": ["a", "b"]}, {"ab"}),
    ({"tags": "a"}, {"ab", "a"}),
    ({"any_tags": ["a", "b"]}, {"ab", "a", "b"}),
    ({"any_tags": ["c", "zzz"]}, {"c"}),
    ({"tags": ["a"], "any_tags": ["b", "c"]}, {"ab"}),
    ({"tags": ["zzz"]}, set()),
    ({"tier": "validated"}, {"a"}),
    ({"tier": ["scratch", "validated"]}, {"a", "b"}),
    ({"since": T0 - 2 * SEC, "until": T0}, {"a", "b", "none"}),
    ({"since": "2023-11-14T22:13:19Z"}, {"b", "none", "c"}),
    ({"until": "2023-11-14T22:13:18Z"}, {"ab", "a"}),
    ({"meta": {"n": 1}}, {"ab"}),  # not True, not 1.0
    ({"meta": {"n": True}}, {"b"}),
    ({"meta": {"n": 1.0}}, {"none"}),
    ({"meta": {"s": "x"}}, {"ab", "a"}),
    ({"meta": {"s": "x", "n": 2}}, {"a"}),
    ({"meta": {"s": "1"}}, {"b"}),
    ({"meta": {"missing": "x"}}, set()),
    ({"meta": {"s": "caf\u00e9"}}, {"c"}),
    ({"kind": "memory"}, {"ab", "a", "b", "none", "c"}),
], ids=lambda v: json.dumps(v, ensure_ascii=True) if isinstance(v, dict) else None)
def test_filters(tagged: tuple[capsule.Capsule, dict[str, str]], kw: dict[str, Any], want: set[str]) -> None:
    cap, ids = tagged
    expect = {ids[n] for n in want}
    for mode, got in found(cap, **kw).items():
        assert got == expect, f"{mode}: {sorted(n for n, i in ids.items() if i in got)} for {kw}"


def test_meta_filter_string_is_nfc_normalized_like_tags(tagged: tuple[capsule.Capsule, dict[str, str]]) -> None:
    """Stored meta text is NFC (canonical encoding); tag filters are NFC-normalized,
    so a decomposed meta filter value should match the same record."""
    cap, ids = tagged
    decomposed = unicodedata.normalize("NFD", "caf\u00e9")
    assert decomposed != "caf\u00e9"
    got = {h.id for h in cap.search("topic", mode="lexical", meta={"s": decomposed})}
    assert got == {ids["c"]}


def test_bad_filters_are_usage_errors(tagged: tuple[capsule.Capsule, dict[str, str]]) -> None:
    cap, _ = tagged
    for kw in ({"tier": "gold"}, {"since": "yesterday"}, {"until": 1.5}, {"tags": 3}, {"meta": {"k": object()}}):
        with pytest.raises(capsule.UsageError):
            cap.search("topic", mode="lexical", **kw)


def test_kind_filter_and_notes_and_decisions(tmp_path: Path) -> None:
    p = tmp_path / "kinds.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            m = tx.remember("rotate the vault key", embedding=[1.0, 0.0])
            n = tx.note("vault key rotation is monthly")
            d = tx.decide("rotate keys on friday", rationale="the vault is quiet on friday")
            tx.constrain("never print the vault key")  # constraints are not searched
        assert {h.id for h in cap.search("vault", mode="lexical")} == {m, n, d}
        assert [h.id for h in cap.search("vault", mode="lexical", kind="note")] == [n]
        assert [h.id for h in cap.search("vault", mode="lexical", kind=["decision", "memory"], k=5)
                ] == [h.id for h in cap.search("vault", mode="lexical", k=5) if h.id in (m, d)]
        dh = cap.search("quiet", mode="lexical")
        assert [h.id for h in dh] == [d]
        assert dh[0].text == "rotate keys on friday" and dh[0].kind == "decision"
        assert cap.search(vector=[1.0, 0.0], mode="vector", kind="note") == []
        assert [h.id for h in cap.search(vector=[1.0, 0.0], mode="vector", kind="memory")] == [m]


def test_expired_records_are_never_returned(tmp_path: Path) -> None:
    p = tmp_path / "ttl.capsule"
    with capsule.create(p, clock=fixed_clock) as cap:
        with cap.commit() as tx:
            gone = tx.remember("ephemeral fact", ttl=10 * SEC, time=T0 - 10 * SEC, embedding=[1.0, 0.0])
            edge = tx.remember("ephemeral edge", ttl=10 * SEC + 1, time=T0 - 10 * SEC, embedding=[1.0, 0.01])
            keep = tx.remember("ephemeral but durable", embedding=[1.0, 0.02], time=T0 - 100 * SEC)
            tx.note("ephemeral note")
        # the writer's clock is T0: time + ttl <= now is expired (7.1)
        for mode in ("lexical", "vector", "hybrid"):
            got = {h.id for h in cap.search("ephemeral", vector=None if mode == "lexical" else [1.0, 0.0],
                                            mode=mode, k=10)}
            assert gone not in got and {edge, keep} <= got, mode
        later = {h.id for h in cap.search(vector=[1.0, 0.0], mode="vector", now=T0 + 1)}
        assert later == {keep}
        earlier = {h.id for h in cap.search(vector=[1.0, 0.0], mode="vector", now=T0 - 1)}
        assert earlier == {gone, edge, keep}
        cap.save_index()
    with capsule.open(p) as cap:  # from the snapshot, with the real clock: both long expired
        assert {h.id for h in cap.search(vector=[1.0, 0.0], mode="vector")} == {keep}
        assert {h.id for h in cap.search(vector=[1.0, 0.0], mode="vector", now=T0 - 1)} == {gone, edge, keep}


def test_rolled_back_records_are_never_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = capsule.generate_key()
    p = tmp_path / "rb.capsule"
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    with capsule.create(p, clock=fixed_clock) as cap:
        with cap.commit() as tx:
            before = [tx.remember(f"kept {i}", embedding=x[i]) for i in range(200)]
        cap.checkpoint("good", key=key)
        with cap.commit() as tx:
            after = [tx.remember(f"bad {i} poisoned", embedding=x[i]) for i in range(200, 400)]
            tx.note("poisoned note")
        assert cap.search("poisoned", mode="lexical")
        assert cap.rollback("good", key=key) is not None
        for below in (20_000, 10):
            monkeypatch.setattr(_vindex, "EXACT_BELOW", below)
            assert cap.search("poisoned", mode="lexical") == []
            for i in range(200, 400, 37):
                hits = cap.search(vector=x[i], k=20, mode="vector")
                assert len(hits) == 20 and not {h.id for h in hits} & set(after), below
            assert own_rank(cap, x[5], before[5]) == 1
        # Adding a dropped record again restores it (a revert with `restore`).
        with cap.commit() as tx:
            again = tx.remember("bad 250 poisoned", embedding=x[250])
    with capsule.open(p) as cap:
        monkeypatch.setattr(_vindex, "EXACT_BELOW", 20_000)
        assert again == after[50], "same content, same record: restored, not new"
        assert own_rank(cap, x[250], again) == 1
        assert {h.id for h in cap.search("poisoned", mode="lexical")} == {again}


def test_ties_go_to_the_smaller_id_even_with_many_tied_candidates(tmp_path: Path) -> None:
    """16.6: score descending, then record id ascending - also when more entries tie
    than the exact scan's float32 preselection keeps (4k + 32)."""
    p = tmp_path / "ties.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"same direction {i}", embedding=[1.0, 0.0, 0.0, 0.0]) for i in range(200)]
            other = tx.remember("elsewhere", embedding=[0.0, 1.0, 0.0, 0.0])
        for k in (1, 3, 10, 50):
            got = [h.id for h in cap.search(vector=[2.0, 0.0, 0.0, 0.0], mode="vector", k=k)]
            assert got == sorted(ids)[:k], f"k={k}"
        got = [h.id for h in cap.search(vector=[0.0, 1.0, 0.0, 0.0], mode="vector", k=5)]
        assert got[0] == other and got[1:] == sorted(ids)[:4]
        # lexical ties: identical BM25 scores
        with cap.commit() as tx:
            lex = [tx.remember(f"tie word {i}") for i in range(150)]
        got = [h.id for h in cap.search("tie", mode="lexical", k=7)]
        assert got == sorted(lex)[:7]


def test_hybrid_is_reciprocal_rank_fusion_of_the_two_rankings(layered: Layered) -> None:
    with capsule.open(layered.path) as cap:
        emb = capsule.get_embedder("hash-16")
        for text, k in (("deploy freeze vault", 10), ("gamma delta cache", 3)):
            deep = max(50, 4 * k)
            vec = cap.search(vector=emb.embed([text])[0], mode="vector", k=deep)
            lex = cap.search(text, mode="lexical", k=deep)
            score: dict[str, float] = {}
            for hits in (vec, lex):
                for rank, h in enumerate(hits, 1):
                    score[h.id] = score.get(h.id, 0.0) + 1.0 / (60 + rank)
            want = sorted(score, key=lambda r: (-score[r], r))[:k]
            got = cap.search(text, mode="hybrid", k=k, fusion="rrf")
            assert [h.id for h in got] == want
            assert [h.score for h in got] == [score[r] for r in want]


def bm25_reference(docs: Sequence[str], query: str) -> list[float]:
    """16.4, written from the spec text, with the tokens of a 1.4 file (tokenizer 2, 16.4.1;
    no memory here has a session, so every window is its document alone)."""
    from capsule.search.tokenize import tokenize2 as toks

    td = [toks(d) for d in docs]
    n = len(td)
    avg = sum(map(len, td)) / n
    out = []
    for t in td:
        s = 0.0
        for term in sorted(set(toks(query))):
            df = sum(term in u for u in td)
            if not df:
                continue
            tf = t.count(term)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(t) / avg))
        out.append(s)
    return out


def test_lexical_scores_are_bm25_as_specified(tmp_path: Path) -> None:
    docs = ["The Vault key, the VAULT door.", "vault", "Straße und STRASSE", "ﬁle the ﬁnal report",
            "lunch_break at noon", "nothing relevant here at all, really nothing"]
    p = tmp_path / "bm25.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(d) for d in docs]
        for query in ("vault key", "strasse", "file", "lunch", "break", "noon noon at"):
            ref = bm25_reference(docs, query)
            got = {h.id: h.score for h in cap.search(query, mode="lexical", k=10)}
            want = {ids[i]: s for i, s in enumerate(ref) if s > 0}
            assert got.keys() == want.keys(), query
            for rid, s in want.items():
                assert got[rid] == pytest.approx(s, rel=1e-12), query


@pytest.mark.parametrize("space", ["cosine", "ip", "l2"])
def test_every_space_scores_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, space: str) -> None:
    """16.6: cosine, inner product, or minus the squared L2 distance, exact and best first."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(800, 16)).astype(np.float32)
    p = tmp_path / f"{space}.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(space=space, dim=16)
        with cap.commit() as tx:
            ids = [tx.remember(f"r{i}", embedding=x[i]) for i in range(800)]
    xs = x.astype(np.float64)
    for below in (20_000, 10):
        monkeypatch.setattr(_vindex, "EXACT_BELOW", below)
        with capsule.open(p) as cap:
            assert cap.vector_config().space == space  # type: ignore[union-attr]
            for q in rng.normal(size=(10, 16)):
                s = {"cosine": unit(xs) @ unit(q), "ip": xs @ q, "l2": -((xs - q) ** 2).sum(axis=1)}[space]
                hits = cap.search(vector=q, mode="vector", k=10)
                if below:
                    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-s)[:10]]
                for h in hits:
                    assert h.score == pytest.approx(s[ids.index(h.id)], rel=1e-6, abs=1e-6)


def test_cosine_ignores_the_scale_of_stored_embeddings(tmp_path: Path) -> None:
    """Cosine similarity is scale-invariant and at most 1: an embedding stored as
    1e-25 * v or 1e30 * v (both inside float32 range) scores like v itself."""
    p = tmp_path / "scale.capsule"
    base = {"plain": [1.0, 0.0, 1.0], "tiny": [1e-25, 0.0, 1e-25], "big": [1e30, 0.0, 1e30]}
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            ids = {name: tx.remember(name, embedding=v) for name, v in base.items()}
        for q in ([1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]):
            hits = {h.id: h.score for h in cap.search(vector=q, mode="vector")}
            want = float(np.float32(unit(np.array(base["plain"])) @ unit(np.array(q))))
            for name, rid in ids.items():
                assert -1.0 <= hits[rid] <= 1.0, f"{name}: cosine {hits[rid]} is outside [-1, 1]"
                assert hits[rid] == pytest.approx(want, abs=1e-6), f"{name} scored {hits[rid]}, not {want}"


def test_unknown_kind_filter_is_a_usage_error(tagged: tuple[capsule.Capsule, dict[str, str]]) -> None:
    """Like an unknown tier: a typo must not look like "no results"."""
    cap, _ = tagged
    with pytest.raises(capsule.UsageError):
        cap.search("topic", mode="lexical", kind="memories")
    r = invoke("search", cap.path, "topic", "--mode", "lexical", "--kind", "memories")
    assert r.exit_code == 2, r.output


def test_hits_stay_usable_after_the_capsule_is_closed(tmp_path: Path) -> None:
    """``with capsule.open(p) as cap: hits = cap.search(...)`` then reading the hits:
    lexical hits carry their record; vector hits must too."""
    p = tmp_path / "closed.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("the deploy key lives in vault", embedding=[1.0, 0.0], tags=["ops"])
    with capsule.open(p) as cap:
        lexical = cap.search("vault", mode="lexical")
        vector = cap.search(vector=[1.0, 0.0], mode="vector")
    assert lexical[0].text == "the deploy key lives in vault"
    assert vector[0].text == "the deploy key lives in vault"
    assert vector[0].to_dict() == lexical[0].to_dict() | {"score": vector[0].score}


def test_a_reader_sees_new_commits_after_refresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_vindex, "EXACT_BELOW", 10)
    rng = np.random.default_rng(22)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    p = tmp_path / "live.capsule"
    with capsule.create(p) as w:
        with w.commit() as tx:
            ids = [tx.remember(f"tok{i:05d}", embedding=x[i]) for i in range(300)]
        assert w.save_index()
        with capsule.open(p) as r:
            assert own_rank(r, x[10], ids[10]) == 1  # the reader loads the snapshot
            with w.commit() as tx:
                ids += [tx.remember(f"tok{i:05d}", embedding=x[i]) for i in range(300, 400)]
            assert w.save_index()  # a newer snapshot, which the reader need not load
            assert own_rank(r, x[350], ids[350]) != 1, "a reader's snapshot does not move by itself"
            assert r.refresh()
            for i in (0, 299, 300, 399):
                assert own_rank(r, x[i], ids[i]) == 1
                assert [h.id for h in r.search(f"tok{i:05d}", mode="lexical")] == [ids[i]]


def test_a_view_searches_only_what_was_committed_then(tmp_path: Path) -> None:
    key = capsule.generate_key()
    rng = np.random.default_rng(23)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    p = tmp_path / "view.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            old = [tx.remember(f"tok{i:05d}", embedding=x[i]) for i in range(300)]
        assert cap.save_index()
        cap.checkpoint("c1", key=key)
        with cap.commit() as tx:
            new = [tx.remember(f"tok{i:05d}", embedding=x[i]) for i in range(300, 600)]
        assert cap.save_index()  # the newest snapshot holds records the view must not see
    with capsule.open(p, at="c1") as view:
        assert view.index_info()["snapshot"]["vectors"] == 300
        assert {h.id for h in view.search(vector=x[450], mode="vector", k=1000)} == set(old)
        assert view.search("tok00450", mode="lexical") == []
    with capsule.open(p) as cap:
        assert {h.id for h in cap.search(vector=x[450], mode="vector", k=1000)} == set(old + new)


def test_auto_mode(layered: Layered, cli_capsule: tuple[Path, list[str]], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: hybrid when the vectors name a semantic embedder, else lexical (the hash
    embedder is lexical itself); with a vector, hybrid when there is text too, else vector."""
    with capsule.open(layered.path) as cap:
        v = np.random.default_rng(0).normal(size=DIM_LAYERED)
        assert ranked(cap.search("deploy vault")) == ranked(cap.search("deploy vault", mode="lexical"))
        assert ranked(cap.search(vector=v)) == ranked(cap.search(vector=v, mode="vector"))
        assert ranked(cap.search("deploy", vector=v)) == ranked(cap.search("deploy", vector=v, mode="hybrid"))
    with capsule.open(cli_capsule[0]) as cap:
        assert ranked(cap.search("deploy")) == ranked(cap.search("deploy", mode="lexical"))
    from capsule.search import embed as _embed

    monkeypatch.setitem(_embed._REGISTRY, "sem16", lambda: capsule.HashEmbedder(16))  # stands in for a model
    p = tmp_path / "sem.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(dim=16, embedder="sem16")
        with cap.commit() as tx:
            for i, text in enumerate(["deploy the vault", "vault keys rotate", "lunch at noon", "deploy freeze"]):
                tx.remember(text, embedding=capsule.HashEmbedder(16).embed([text])[0], time=T0 + i)
        hybrid = ranked(cap.search("deploy vault", mode="hybrid"))
        assert ranked(cap.search("deploy vault")) == hybrid != ranked(cap.search("deploy vault", mode="lexical"))


# --- corrupt snapshots ---------------------------------------------------------------------


def small_snapshotted(path: Path) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(13).normal(size=(400, 16)).astype(np.float32)
    with capsule.create(path, clock=fixed_clock) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"tok{i:05d} shared", embedding=x[i], time=T0 + i) for i in range(300)]
        assert cap.save_index()
        with cap.commit() as tx:
            ids += [tx.remember(f"tok{i:05d} shared", embedding=x[i], time=T0 + i) for i in range(300, 400)]
    return ids, x


def test_a_byte_flipped_snapshot_blob_is_rebuilt_and_reported(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """16.2: a snapshot that fails a check (3.4: the SHA-256) is treated as absent: the
    index is rebuilt from the records and the doubt reported; answers stay right."""
    good = tmp_path / "good.capsule"
    ids, x = small_snapshotted(good)
    with capsule.open(good) as cap:
        snap = cap.index_info()["snapshot"]
        want = [ranked(cap.search(vector=x[i], k=5, mode="vector")) for i in (0, 150, 350)]
    bad = tmp_path / "copy" / "bad.capsule"
    bad.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[snap["offset"] + C.FRAME_HEADER_SIZE + 500] ^= 0x10  # inside the blob's vectors/graph
    bad.write_bytes(bytes(data))
    with capsule.open(bad) as cap:
        got = [ranked(cap.search(vector=x[i], k=5, mode="vector")) for i in (0, 150, 350)]
        assert cap.index_info()["doubt"], "the unusable snapshot must be reported"
        assert got == want
        assert [h.id for h in cap.search("tok00123", mode="lexical")] == [ids[123]]


def test_a_snapshot_blob_that_fails_its_bounds_checks_is_rebuilt_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same promise for a blob whose frames are intact (chain and SHA-256 fine)
    but whose content fails 16.2's checks, as a buggy or hostile writer would leave."""
    p = tmp_path / "forged.capsule"
    ids, x = small_snapshotted(p)
    with capsule.open(p) as cap:
        want = [ranked(cap.search(vector=x[i], k=5, mode="vector")) for i in (0, 150, 350)]
    with capsule.open(p, "a") as cap:
        cap._write_commit([], blob=(_vindex.BLOB_TYPE, _vindex.MAGIC + b"\xff" * 64))
    rep = capsule.verify(p)
    assert rep.ok or (rep.first_error or {}).get("check") == "vindex", "setup: only the blob's content is bad"
    for below in (20_000, 0):
        monkeypatch.setattr(_vindex, "EXACT_BELOW", below)
        with capsule.open(p) as cap:
            got = [ranked(cap.search(vector=x[i], k=5, mode="vector")) for i in (0, 150, 350)]
            assert cap.index_info()["doubt"] and "rebuilt" in cap.index_info()["doubt"]
            if below:
                assert got == want
            else:
                assert [g[0] for g in got] == [w[0] for w in want]
            assert own_rank(cap, x[399], ids[399]) == 1
    np.save(tmp_path / "q.npy", x[7])
    r = invoke("search", p, "--vector", tmp_path / "q.npy", "-k", "1", "--json")
    assert r.exit_code == 0, r.output
    assert [h["id"] for h in json.loads(r.stdout)] == [ids[7]]
    assert "warning" in r.stderr and "rebuilt" in r.stderr, "the CLI says so"


# --- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_capsule(tmp_path: Path) -> tuple[Path, list[str]]:
    p = tmp_path / "cli.capsule"
    with capsule.create(p, clock=fixed_clock) as cap, cap.commit() as tx:
        ids = [
            tx.remember("the deploy key lives in vault", tags=["ops", "secrets"], embedding=[1.0, 0.0, 0.0],
                        meta={"chunk": 0, "path": "a.md", "raw": b"\x01\x02"}),
            tx.remember("lunch is at noon", tags=["food"], embedding=[0.0, 1.0, 0.0], meta={"chunk": 1}),
            tx.remember("deploy freeze on friday", tags=["ops"], embedding=[0.7, 0.7, 0.0], tier="validated"),
        ]
    return p, ids


def test_cli_search_json_shape(cli_capsule: tuple[Path, list[str]]) -> None:
    p, ids = cli_capsule
    r = invoke("search", p, "deploy", "--mode", "lexical", "--json")
    assert r.exit_code == 0, r.output
    assert_no_crash(r)
    hits = json.loads(r.stdout)
    assert isinstance(hits, list) and len(hits) == 2
    for h in hits:
        assert set(h) == HIT_KEYS | {"mode"} and h["mode"] == "lexical"  # the mode it ran (16.7)
        assert re.fullmatch(r"[0-9a-f]{64}", h["id"])
        assert isinstance(h["score"], float) and h["score"] > 0
        assert h["kind"] == "memory" and isinstance(h["text"], str)
        assert isinstance(h["tags"], list) and isinstance(h["meta"], dict)
        assert h["time"] == "2023-11-14T22:13:20Z"
    with capsule.open(p) as cap:
        assert hits == [{**h.to_dict(), "mode": "lexical"} for h in cap.search("deploy", mode="lexical")]
    first = next(h for h in hits if h["id"] == ids[0])
    assert first["tags"] == ["ops", "secrets"] and first["meta"] == {"chunk": 0, "path": "a.md", "raw": "0102"}


def test_cli_search_with_vector_files_and_filters(cli_capsule: tuple[Path, list[str]], tmp_path: Path) -> None:
    p, ids = cli_capsule
    np.save(tmp_path / "q.npy", np.array([0.9, 0.1, 0.0], np.float32))
    (tmp_path / "q.json").write_text("[0.9, 0.1, 0]")
    np.save(tmp_path / "row.npy", np.array([[0.9, 0.1, 0.0]]))
    outs = []
    for f in ("q.npy", "q.json", "row.npy"):
        r = invoke("search", p, "--vector", tmp_path / f, "--json")
        assert r.exit_code == 0, r.output
        outs.append([h["id"] for h in json.loads(r.stdout)])
    assert outs[0] == outs[1] == outs[2] == [ids[0], ids[2], ids[1]]
    r = invoke("search", p, "--vector", tmp_path / "q.npy", "--tag", "ops", "--tier", "validated", "--json")
    assert [h["id"] for h in json.loads(r.stdout)] == [ids[2]]
    r = invoke("search", p, "--vector", tmp_path / "q.npy", "--meta", "chunk=1", "--json")
    assert [h["id"] for h in json.loads(r.stdout)] == [ids[1]]
    r = invoke("search", p, "--vector", tmp_path / "q.npy", "--meta", "path=a.md", "--any-tag", "food",
               "--any-tag", "ops", "--json", "-k", "1")
    assert [h["id"] for h in json.loads(r.stdout)] == [ids[0]]
    r = invoke("search", p, "deploy", "--mode", "lexical", "--until", "2023-11-14T22:13:19Z", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    r = invoke("search", p, "deploy", "--mode", "lexical")
    assert r.exit_code == 0 and "deploy" in r.stdout
    r = invoke("search", p, "nothing-matches-this", "--mode", "lexical")
    assert r.exit_code == 0 and "no results" in r.stdout


def bad_vector_files(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "v.txt").write_text("1 2 3")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    (tmp_path / "strs.json").write_text('["1", "2", "3"]')
    (tmp_path / "bad.json").write_text("[1, 2,")
    (tmp_path / "empty.json").write_text("[]")
    np.save(tmp_path / "wrongdim.npy", np.zeros(5, np.float32) + 1)
    np.save(tmp_path / "matrix.npy", np.ones((2, 3)))
    np.save(tmp_path / "strings.npy", np.array(["a", "b", "c"]))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "nan.json").write_text("[NaN, 0, 0]")
    return {
        "missing": ["--vector", str(tmp_path / "nope.npy")],
        "txt": ["--vector", str(tmp_path / "v.txt")],
        "broken-npy": ["--vector", str(tmp_path / "broken.npy")],
        "json-object": ["--vector", str(tmp_path / "obj.json")],
        "json-strings": ["--vector", str(tmp_path / "strs.json")],
        "json-invalid": ["--vector", str(tmp_path / "bad.json")],
        "json-empty": ["--vector", str(tmp_path / "empty.json")],
        "wrong-dim": ["--vector", str(tmp_path / "wrongdim.npy")],
        "matrix": ["--vector", str(tmp_path / "matrix.npy")],
        "npy-strings": ["--vector", str(tmp_path / "strings.npy")],
        "npy-pickle": ["--vector", str(tmp_path / "pickled.npy")],
        "json-nan": ["--vector", str(tmp_path / "nan.json")],
        "mode-bogus": ["x", "--mode", "bogus"],
        "tier-bogus": ["x", "--tier", "gold"],
        "since-bogus": ["x", "--since", "someday"],
        "meta-no-equals": ["x", "--meta", "novalue"],
        "vector-mode-no-vector-no-embedder": ["x", "--mode", "vector"],
        "embedder-unknown": ["x", "--mode", "vector", "--embedder", "nope"],
        "embedder-wrong-dim": ["x", "--mode", "vector", "--embedder", "hash"],
    }


BAD_CLI = ["missing", "txt", "broken-npy", "json-object", "json-strings", "json-invalid", "json-empty",
           "wrong-dim", "matrix", "npy-strings", "npy-pickle", "json-nan", "mode-bogus", "tier-bogus",
           "since-bogus", "meta-no-equals", "vector-mode-no-vector-no-embedder", "embedder-unknown",
           "embedder-wrong-dim"]


@pytest.mark.parametrize("case", BAD_CLI)
def test_cli_search_errors_are_one_line_usage_errors(cli_capsule: tuple[Path, list[str]], tmp_path: Path,
                                                     case: str) -> None:
    p, _ = cli_capsule
    before = p.read_bytes()
    r = invoke("search", p, *bad_vector_files(tmp_path)[case])
    assert_no_crash(r)
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr)
    assert r.stdout == ""
    assert p.read_bytes() == before


def test_cli_search_missing_capsule_and_bogus_mode_real_process(cli_capsule: tuple[Path, list[str]],
                                                                 tmp_path: Path) -> None:
    p, _ = cli_capsule
    for argv in (["search", tmp_path / "absent.capsule", "x"], ["search", p, "x", "--mode", "bogus"],
                 ["search", p, "--vector", tmp_path / "nope.json"], ["search", tmp_path, "x"]):
        proc = run_capsule(*argv, cwd=tmp_path)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode != 0 and proc.returncode == 2, (argv, err)
        assert_one_line_error(err)
    assert not (tmp_path / "absent.capsule").exists()


def test_cli_search_table_escapes_control_characters(tmp_path: Path) -> None:
    """A capsule from another host must not drive the terminal through search output."""
    p = tmp_path / "evil.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("evil \x1b[2J\x1b]0;pwned\x07 text \x9b31m", tags=["t"], meta={"k": "\x1b[31m"})
    r = invoke("search", p, "evil", "--mode", "lexical")
    assert r.exit_code == 0, r.output
    assert "evil" in r.stdout
    assert not any(c in r.stdout for c in "\x1b\x07\x9b"), repr(r.stdout)
    r = invoke("search", p, "evil", "--mode", "lexical", "--json")
    assert json.loads(r.stdout)[0]["text"].startswith("evil \x1b[2J"), "JSON keeps the text exactly"


def test_cli_search_at_a_checkpoint(tmp_path: Path) -> None:
    key = capsule.generate_key()
    p = tmp_path / "at.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            a = tx.remember("release notes one")
        cap.checkpoint("v1", key=key)
        with cap.commit() as tx:
            tx.remember("release notes two")
    r = invoke("search", p, "release", "--mode", "lexical", "--at", "v1", "--json")
    assert r.exit_code == 0, r.output
    assert [h["id"] for h in json.loads(r.stdout)] == [a]
    r = invoke("search", p, "release", "--mode", "lexical", "--json")
    assert len(json.loads(r.stdout)) == 2


# --- 5. the hash embedder ------------------------------------------------------------------

EMBED_SCRIPT = r"""
import hashlib, json, sys
import capsule
texts = json.loads(sys.argv[1])
for name in ("hash", "hash-16"):
    v = capsule.get_embedder(name).embed(texts)
    print(name, v.dtype.str, v.shape, hashlib.sha256(v.tobytes()).hexdigest())
"""

EMBED_TEXTS = ["the deploy key lives in vault", "", "   ", "Straße ﬁle ÉCOLE école", "日本語のテキスト 123",
               "repeat repeat repeat repeat", "a_b c-d e.f", "x" * 5000]


def embed_digests(texts: Sequence[str]) -> str:
    lines = []
    for name in ("hash", "hash-16"):
        v = capsule.get_embedder(name).embed(texts)
        lines.append(f"{name} {v.dtype.str} {v.shape} {hashlib.sha256(v.tobytes()).hexdigest()}")
    return "\n".join(lines) + "\n"


def test_hash_embedder_is_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    here = embed_digests(EMBED_TEXTS)
    for seed in ("1", "2"):
        r = run_py(EMBED_SCRIPT, json.dumps(EMBED_TEXTS), cwd=tmp_path, env=child_env(PYTHONHASHSEED=seed))
        assert r.stdout == here, f"PYTHONHASHSEED={seed}"


def hash_embed_reference(text: str, dim: int = 384) -> np.ndarray:
    """16.5, written from the spec text."""
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold())
    feats: dict[str, int] = {}
    for i, w in enumerate(words):
        keys = ["w:" + w] + ([f"b:{words[i - 1]} {w}"] if i else [])
        padded = f"<{w}>"
        keys += ["c:" + padded[j:j + 3] for j in range(len(padded) - 2)]
        for key in keys:
            feats[key] = feats.get(key, 0) + 1
    v = np.zeros(dim, np.float64)
    for feat in sorted(feats):
        h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
        sign = 1.0 if h >> 63 else -1.0
        v[h % dim] += sign * (1 + math.log(feats[feat])) * (0.5 if feat.startswith("c:") else 1.0)
    norm = float(np.linalg.norm(v))
    if norm == 0:
        v[0] = 1.0
    else:
        v /= norm
    return v


def test_hash_embedder_follows_the_spec() -> None:
    emb = capsule.get_embedder("hash")
    assert (emb.name, emb.dim) == ("hash", 384)
    got = emb.embed(EMBED_TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(EMBED_TEXTS), 384)
    for text, row in zip(EMBED_TEXTS, got, strict=True):
        np.testing.assert_allclose(row, hash_embed_reference(text), rtol=0, atol=1e-7, err_msg=repr(text))
    assert np.array_equal(emb.embed(["deploy key"]), emb.embed(["DEPLOY, key!"]))
    assert isinstance(emb, capsule.Embedder)


# --- 6. a model of exact vector search -----------------------------------------------------

LATTICE_DIM = 8
TAGS = ("a", "b", "c")
TIER_LIST = ("scratch", "working", "validated")
NOW = T0 + 3 * SEC


@st.composite
def lattice_vectors(draw: st.DrawFn) -> tuple[float, ...]:
    """Unit vectors whose pairwise cosines are multiples of 1/4, scaled by a power of two:
    every cosine is exact in float32, so ties are exact and common."""
    v = [0.0] * LATTICE_DIM
    if draw(st.booleans()):
        v[draw(st.integers(0, LATTICE_DIM - 1))] = draw(st.sampled_from([1.0, -1.0]))
    else:
        for i in draw(st.permutations(range(LATTICE_DIM)))[:4]:
            v[i] = draw(st.sampled_from([0.5, -0.5]))
    scale = 2.0 ** draw(st.integers(-2, 2))
    return tuple(x * scale for x in v)


record_st = st.fixed_dictionaries({
    "vector": st.one_of(st.none(), lattice_vectors(), lattice_vectors(), lattice_vectors()),
    "tags": st.sets(st.sampled_from(TAGS), max_size=3),
    "tier": st.sampled_from(TIER_LIST),
    "slot": st.integers(0, 5),  # time = T0 + slot seconds
    "ttl": st.sampled_from([None, None, SEC, 3 * SEC, 5 * SEC]),
    "note": st.booleans(),
})

commit_st = st.tuples(st.just("commit"), st.lists(record_st, min_size=1, max_size=8))
rollback_st = st.tuples(st.just("rollback"), st.integers(0, 1000))
op_st = st.one_of(
    commit_st, commit_st, commit_st,  # weights: mostly commits, and rollbacks often enough to matter
    st.tuples(st.just("checkpoint")), st.tuples(st.just("checkpoint")),
    rollback_st, rollback_st,
    st.tuples(st.just("readd"), st.integers(0, 1000)),
    st.tuples(st.just("save_index")),
    st.tuples(st.just("reopen")),
)

filter_st = st.fixed_dictionaries({}, optional={
    "tags": st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
    "any_tags": st.lists(st.sampled_from(TAGS), min_size=1, max_size=2, unique=True),
    "tier": st.lists(st.sampled_from(TIER_LIST), min_size=1, max_size=2, unique=True),
    "since": st.integers(0, 5).map(lambda s: T0 + s * SEC),
    "until": st.integers(0, 5).map(lambda s: T0 + s * SEC),
})


@dataclass
class Model:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record fields
    order: list[str] = field(default_factory=list)  # memories with vectors, commit order
    live: set[str] = field(default_factory=set)
    checkpoints: list[set[str]] = field(default_factory=list)

    def search(self, q: tuple[float, ...], k: int, flt: dict[str, Any]) -> list[tuple[str, float]]:
        qu = np.array(q) / np.linalg.norm(q)
        out = []
        for rid in self.order:
            r = self.records[rid]
            if rid not in self.live:
                continue
            if r["ttl"] is not None and r["time"] + r["ttl"] <= NOW:
                continue
            if not set(flt.get("tags", ())) <= r["tags"]:
                continue
            if flt.get("any_tags") and not set(flt["any_tags"]) & r["tags"]:
                continue
            if flt.get("tier") and r["tier"] not in flt["tier"]:
                continue
            if "since" in flt and r["time"] < flt["since"]:
                continue
            if "until" in flt and r["time"] > flt["until"]:
                continue
            v = np.array(r["vector"])
            out.append((rid, float(np.dot(v / np.linalg.norm(v), qu))))
        out.sort(key=lambda t: (-t[1], t[0]))
        return out[:k]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=10), data=st.data())
def test_exact_vector_search_matches_a_brute_force_model(ops: list[tuple[Any, ...]], data: st.DataObject) -> None:
    key = capsule.generate_key()
    model = Model()
    made: list[dict[str, Any]] = []  # every record ever made, to add again
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.capsule"
        cap = capsule.create(p, clock=lambda: T0 + 4 * SEC)
        try:
            def remember(tx: capsule.Transaction, r: dict[str, Any]) -> None:
                fields = {"text": f"r{len(made)}" if "text" not in r else r["text"], **r}
                if fields["note"]:
                    rid = tx.note(fields["text"], time=T0 + fields["slot"] * SEC)
                else:
                    rid = tx.remember(fields["text"], tags=sorted(fields["tags"]), tier=fields["tier"],
                                      ttl=fields["ttl"], time=T0 + fields["slot"] * SEC,
                                      embedding=None if fields["vector"] is None else list(fields["vector"]))
                if "text" not in r:
                    made.append(fields)
                if rid not in model.records:
                    model.records[rid] = {**fields, "time": T0 + fields["slot"] * SEC, "tags": set(fields["tags"])}
                    if not fields["note"] and fields["vector"] is not None:
                        model.order.append(rid)
                model.live.add(rid)  # new, or a dropped record restored by adding it again

            for i, op in enumerate(ops):
                if op[0] == "commit":
                    with cap.commit() as tx:
                        for r in op[1]:
                            remember(tx, r)
                elif op[0] == "readd" and made:
                    with cap.commit() as tx:
                        remember(tx, made[op[1] % len(made)])
                elif op[0] == "save_index":
                    cap.save_index()
                elif op[0] == "reopen":
                    cap.close()
                    cap = capsule.open(p, "a", clock=lambda: T0 + 4 * SEC)
                elif op[0] == "checkpoint":
                    cap.checkpoint(f"c{i}", key=key)
                    model.checkpoints.append(set(model.live))
                elif op[0] == "rollback" and model.checkpoints:
                    j = op[1] % len(model.checkpoints)
                    label = [f"c{n}" for n, o in enumerate(ops) if o[0] == "checkpoint"][j]
                    cap.rollback(label, key=key)
                    model.live = set(model.checkpoints[j])
                if cap.vector_config() is None:
                    continue
                q = data.draw(lattice_vectors(), label="query")
                k = data.draw(st.integers(1, 8), label="k")
                flt = data.draw(filter_st, label="filter")
                got = [(h.id, h.score) for h in cap.search(vector=list(q), k=k, mode="vector", now=NOW, **flt)]
                assert got == model.search(q, k, flt), f"after op {i} {op[0]}"
        finally:
            cap.close()


def test_auto_mode_falls_back_to_words_when_the_capsules_embedder_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A capsule packed with a model this host lacks still answers `search` (auto)
    by BM25 and says so; asking for vectors explicitly is a clear error."""
    from capsule.search import embed as _embed

    def missing() -> capsule.Embedder:
        raise capsule.UsageError("the fancy embedder is not installed here")

    monkeypatch.setitem(_embed._REGISTRY, "fancy", missing)
    p = tmp_path / "fancy.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(dim=3, embedder="fancy")
        with cap.commit() as tx:
            want = tx.remember("page the on-call lead about payments", embedding=[1.0, 0.0, 0.0])
            tx.remember("lunch is at noon", embedding=[0.0, 1.0, 0.0])
    with capsule.open(p) as cap:
        hits = cap.search("payments lead")
        assert [h.id for h in hits] == [want]
        assert "words only" in (cap.index_info()["notice"] or "")
        with pytest.raises(capsule.UsageError, match="not installed"):
            cap.search("payments lead", mode="vector")
        assert cap.search(vector=[1.0, 0.0, 0.0], k=1)[0].id == want  # own vectors still work
        assert cap.index_info()["notice"] is None
    r = invoke("search", p, "payments lead", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["id"] == want


@pytest.mark.parametrize("where", ["threshold", "close"])
def test_a_failed_snapshot_write_never_fails_the_commit_it_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """16.3: a snapshot is optional. When writing it fails (disk full), the commit
    before it still reports success and stays durable; the error is on
    ``close_error``, the writer is poisoned like after any I/O error, and a new
    writer finds every record and searches it."""
    import errno

    import capsule.format.file as cfile
    import capsule.search.part as ccap

    p = tmp_path / "full.capsule"
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(400, 8))
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(100):
                tx.remember(f"m{i}", embedding=vecs[i])
        cap.build_index()
        monkeypatch.setattr(ccap, "SNAPSHOT_EVERY", 50)
        real = cfile._pwrite
        def big(fd: int, data: Any, off: int) -> int:  # only the write carrying the snapshot fails
            if _vindex.MAGIC in bytes(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data, off)

        if where == "threshold":
            monkeypatch.setattr(cfile, "_pwrite", big)
            with cap.commit() as tx:  # passes the threshold: a snapshot follows, and fails
                for i in range(100, 400):
                    tx.remember(f"m{i}", embedding=vecs[i])
            assert tx.info is not None and cap.close_error is not None
            with pytest.raises(capsule.WriterPoisoned), cap.commit() as tx2:
                tx2.remember("after")
        else:
            monkeypatch.setattr(ccap, "SNAPSHOT_EVERY", 10**9)
            with cap.commit() as tx:
                for i in range(100, 400):
                    tx.remember(f"m{i}", embedding=vecs[i])
            monkeypatch.setattr(cfile, "_pwrite", big)
    monkeypatch.undo()
    assert capsule.verify(p).ok
    with capsule.open(p, "a") as cap:
        assert len([r for r in cap.records("memory")]) == 400
        for i in (0, 150, 399):
            assert cap.search(vector=vecs[i], k=1, mode="vector")[0].text == f"m{i}"


def test_a_ttl_reaching_past_2_63_is_not_expired(tmp_path: Path) -> None:
    # the attack on the expiry marks: time + ttl past 2^63 wrapped in the int64 mask, so list and
    # search left out a memory 7.1 allows (ttl up to 2^63 - 1) as if it had expired
    with capsule.create(tmp_path / "t.capsule") as cap:
        with cap.commit() as tx:
            tx.remember("mango forever", ttl=2**63 - 1)
            tx.remember("mango later", ttl=2**62, embedding=[1.0, 0.0])
            tx.remember("mango gone", ttl=1, time=5)
        assert sorted(h.text for h in cap.search(None)) == ["mango forever", "mango later"]
        assert sorted(h.text for h in cap.search("mango", mode="lexical")) == ["mango forever", "mango later"]
        assert [h.text for h in cap.search(vector=[1.0, 0.0], mode="vector")] == ["mango later"]


def test_an_index_build_cut_short_is_dropped_not_snapshotted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the new-user trial: Ctrl-C during `pack --append`'s index build, then the close wrote a
    # snapshot of a graph holding entries twice (112,848 for 100,560 memories): verify failed
    # for good. A catch-up cut short between hnswlib's insert and its bookkeeping is dropped.
    from capsule.search.vindex import VectorIndex

    p = tmp_path / "v.capsule"
    rng = np.random.default_rng(3)
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"m-{i}", "embedding": rng.random(8).tolist()} for i in range(1000)])
    assert capsule.open(p).index_info()["snapshot"]["vectors"] == 1000  # written on close
    real = VectorIndex._append
    calls = []

    def cut(self: Any, entries: Any, stored: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # inserted into the graph, not yet noted: as a SIGINT there
            raise KeyboardInterrupt
        real(self, entries, stored)

    with capsule.open(p, "a") as cap:
        for c in range(3):  # after the snapshot: caught up by the next build
            with cap.commit() as tx:
                tx.put_many([{"text": f"m{c}-{i}", "embedding": rng.random(8).tolist()} for i in range(5000)])
        monkeypatch.setattr(VectorIndex, "_append", cut)
        with pytest.raises(KeyboardInterrupt):
            cap.build_index()
        monkeypatch.setattr(VectorIndex, "_append", real)
        assert cap.build_index() == 16000  # built again, whole and once
        cap.save_index()
    assert capsule.verify(p).ok
    with capsule.open(p) as cap:
        assert cap.index_info()["snapshot"]["vectors"] == 16000
        q = rng.random(8).tolist()
        assert len(cap.search(vector=q, mode="vector", k=5)) == 5
