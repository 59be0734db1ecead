"""Search commands: query a capsule by words or meaning, and pack files into one."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import capsule
from capsule.core import constants as C
from capsule.ingest.source import check_regular, read_regular

from ._errors import call
from ._help import literal
from ._keys import EncryptOpt, RecipientOpt, encryption
from ._params import (
    AtOpt,
    FileArg,
    JsonOpt,
    ValidAtOpt,
    WaitOpt,
    parse_meta,
    time_opt,
    valid_at_iso,
)
from ._render import emit_json, err, isatty, out, warn
from .records import AnyTagOpt, KindOpt, MetaOpt, SinceOpt, TagOpt, TierOpt, UntilOpt, hit_table


def _load_vector(source: Path) -> Any:
    import io

    import numpy as np

    check_regular(source, "--vector ")
    if not source.is_file():
        raise capsule.UsageError(f"--vector {source}: no such file")
    # 11: a query vector is at most what one record may hold
    raw = read_regular(source, C.MAX_RECORD_BYTES, "one record", "--vector ")
    if source.suffix.lower() == ".npy":
        try:
            v = np.load(io.BytesIO(raw), allow_pickle=False)  # never unpickle a file we were handed
        except (ValueError, OSError, EOFError) as e:
            raise capsule.UsageError(f"--vector {source}: not a numeric .npy array ({e})") from None
        if not isinstance(v, np.ndarray):  # an .npz archive
            raise capsule.UsageError(f"--vector {source}: not a numeric .npy array")
    elif source.suffix.lower() == ".json":
        try:
            v = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # ValueError: bad JSON or UTF-8, an int of 4300+ digits
            raise capsule.UsageError(f"--vector {source}: not a JSON list of numbers") from None
        if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            raise capsule.UsageError(f"--vector {source}: not a JSON list of numbers")
        try:
            v = np.array(v, np.float64)
        except OverflowError:  # an int beyond float64
            raise capsule.UsageError(f"--vector {source}: a number is out of range") from None
    else:
        raise capsule.UsageError(f"--vector {source}: expected a .npy or .json file")
    if v.dtype.kind not in "fiu" or v.size == 0 or (v.ndim != 1 and not (v.ndim == 2 and v.shape[0] == 1)):
        raise capsule.UsageError(f"--vector {source}: expected one vector of numbers, got shape {v.shape}")
    return v.reshape(-1)


def search(
    path: FileArg,
    query: Annotated[str, typer.Argument(help="What to look for (text). Without it (and without --vector) the "
                                         "records passing the filters are listed, newest first, as by `capsule "
                                         "list`.", show_default=False, metavar="QUERY")] = "",
    k: Annotated[int, typer.Option("-k", "--top", help="How many results.", min=1, max=10000)] = 10,
    mode: Annotated[str, typer.Option("--mode", help="auto, lexical (BM25), vector or hybrid (both, fused). "
                                      "auto: lexical when the capsule's embedder adds nothing to the words "
                                      "(hash), hybrid with a semantic one (minilm, e5-small, st:...), vector for --vector "
                                      "without a query; --explain says which it ran and why.")] = "auto",
    fusion: Annotated[str | None, typer.Option("--fusion", help="How hybrid fuses its two rankings: weighted "
                                               "(z-scores, weighted by --lexical-weight; the default in capsules "
                                               "created as format 1.4 or later) or rrf (reciprocal rank; the "
                                               "default in older ones).", show_default=False)] = None,
    lexical_weight: Annotated[float | None, typer.Option(
        "--lexical-weight", metavar="W", show_default=False,
        help="Weight of the words in weighted fusion, 0 to 1 (1: words only, 0: vectors only). Default: by "
             "the capsule's embedder (hash 1, minilm 0.7, e5-small 0.8, others and --vector 0.5). Implies --fusion weighted.",
    )] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Say how the results were ranked (the mode auto "
                                          "chose, the fusion and weight) and why: with --json the output becomes "
                                          "{mode, fusion, lexical_weight, why, hits}, else one line on stderr.")]
    = False,
    vector: Annotated[Path | None, typer.Option("--vector", help="Query vector: a .npy array or a .json list.")]
    = None,
    tag: TagOpt = None,
    any_tag: AnyTagOpt = None,
    tier: TierOpt = None,
    kind: KindOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    meta: MetaOpt = None,
    embedder: Annotated[str | None, typer.Option("--embedder", help="Embed the query with this embedder (default: "
                                                 "the one the capsule was packed with).")] = None,
    ef: Annotated[int, typer.Option("--ef", help="HNSW search breadth (higher: better recall, slower).",
                                    min=1, max=100000)] = 64,
    json_out: JsonOpt = False,
    at: AtOpt = None,
    valid_at: ValidAtOpt = None,
) -> None:
    """Search memories by words (BM25), by meaning (vectors) or both.

    Expired and rolled-back records are never returned; results are exactly
    scored, best first, ties broken by record id, the same on every host. The
    vector side finds its candidates in an approximate (HNSW) graph: on large
    capsules raise --ef for better recall. Each
    hit shows where it came from (its file and chunk, or its source) and one
    line of text with the query's words in bold.

    Examples:
      capsule search notes.capsule "deploy freeze" -k 5
      capsule search notes.capsule "deploy freeze" --mode lexical --tag ops --since 2026-01-01
      capsule search notes.capsule --meta chunk=0 --tag ops
      capsule search agent.capsule --vector q.npy --json
      capsule search agent.capsule "who is the CEO" --valid-at 2025-06-01 --json
      capsule search notes.capsule "deploy freeze" --explain --json
      capsule search notes.capsule "deploy freeze" --mode hybrid --lexical-weight 0.7
    """
    meta_map = parse_meta(meta or [])
    when = call(lambda: valid_at_iso(valid_at))

    # 16.6: only what was given is passed on
    fuse = {k: v for k, v in (("fusion", fusion), ("lexical_weight", lexical_weight)) if v is not None}

    def go() -> tuple[list[Any], list[str]]:
        if not path.exists():
            raise capsule.CapsuleNotFound(f"{path}: no such capsule")
        qv = _load_vector(vector) if vector is not None else None
        with capsule.open(path) as cap:
            view = cap.view(at) if at is not None else contextlib.nullcontext(cap)
            with view as c:
                hits = c.search(query, vector=qv, k=k, mode=mode, tags=tag, any_tags=any_tag, tier=tier,
                                kind=kind, since=time_opt(since, "--since"), until=time_opt(until, "--until"), meta=meta_map, embedder=embedder, ef=ef,
                                valid_at=when, **fuse)
                for h in hits:
                    h.record  # noqa: B018  (read while the capsule is open)
                info = c.index_info()
                ranking = getattr(hits, "ranking", None)
                if qv is not None and info["vectors"] is None and ranking is not None and ranking.mode == "vector":
                    # as a text query is told (the library answers [], for an agent that has stored none yet)
                    raise capsule.UsageError("this capsule has no vectors to compare the query vector with: "
                                             "search by words (a query text, --mode lexical)")
                minor[0] = int(cap.format_version.split(".")[1])
                snap = (info["snapshot"] or {}).get("vectors") or 0
                lag = (info["indexed"] or 0) - snap  # 16.3: what this search inserted past the snapshot
                slow = f"inserted {lag} vectors the newest snapshot lacks, as every new process will: " \
                       f"`capsule index {path}` saves them" if lag >= 16_384 else None
                return hits, [m for m in (info["doubt"], info["notice"], slow) if m]

    minor = [4]
    hits, warnings = call(go)
    for w in warnings:
        warn(w)
    ranking = getattr(hits, "ranking", None)
    if explain and not json_out and ranking is not None:
        err.print(f"capsule: ranked by {_ranked_by(ranking)}")
    if json_out:  # 13.6: each hit says the valid time it was found at
        # each hit says how it was ranked (the mode auto chose); --explain wraps them with the reason
        how = {} if ranking is None or explain else {"mode": ranking.mode}
        rows = [{**h.to_dict(), **how} if when is None else {**h.to_dict(), **how, "valid_at": when} for h in hits]
        emit_json({**(ranking.to_dict() if ranking is not None else {}), "hits": rows} if explain else rows)
        return
    if not hits:
        out.print("no results")
        return
    ranked = query.strip() != "" or vector is not None
    out.print(hit_table(hits, query if ranked else None, minor[0]))


def index(path: FileArg, wait: WaitOpt = 0.0, json_out: JsonOpt = False) -> None:
    """Bring the search indexes up to date and save them (spec 16.3, 16.8), so that a search
    in a new process loads them instead of inserting what the newest snapshots lack.

    Writers save them as they go; a capsule filled by many small writes may lag.

    Example: capsule index agent.capsule
    """

    def go() -> dict[str, Any]:
        if not path.exists():
            raise capsule.CapsuleNotFound(f"{path}: no such capsule")
        with capsule.open(path, "a", timeout=wait or None) as cap:
            n = cap.build_index()
            saved = cap.save_index(full=True)
            info = cap.index_info()
        lex = info["lexical"]["snapshot"] or {}
        return {"file": str(path), "vectors": n, "documents": lex.get("documents") or 0, "saved": saved}

    info = call(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"{path}: {info['vectors']} vectors indexed; " + ("snapshots saved" if info["saved"]
                  else "the snapshots were up to date"), markup=False)


def _ranked_by(r: Any) -> str:
    """"hybrid: auto: ...; weighted z-score fusion ..." for --explain."""
    return f"{r.mode}: {r.why}" if r.why else str(r.mode)


def _plural(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def pack(
    src: Annotated[Path, typer.Argument(help="A folder of text files (.txt, .md, .markdown, .rst, .text), one "
                                        "such file, or a .jsonl file of records.", show_default=False,
                                        metavar="SRC")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The capsule to write.", show_default=False)],
    embedder: Annotated[str, typer.Option("--embedder", help=literal(
        "hash (offline hashed word/char n-grams), minilm (needs agent-capsule[minilm]), e5-small (semantic, no torch; "
        "needs agent-capsule[e5], linux x86_64), st:<model dir>, or none. auto: --append keeps the capsule's own "
        "(none for memories without vectors); else hash, unless JSONL records bring embeddings."))] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Records per embedding batch, and per commit in a new "
                                       "capsule (--append writes one commit).", min=1)] = 1000,
    append: Annotated[bool, typer.Option("--append", help="Add to an existing capsule: files already packed "
                                         "with the same bytes add nothing, a changed file's chunks supersede "
                                         "its old ones; a JSONL line whose record is live already (its time "
                                         "aside when it has none) is not packed again.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="With --append and a folder: forget the chunks of files "
                                        "no longer in it (a reason names each path).")] = False,
    root: Annotated[str | None, typer.Option("--root", metavar="NAME", help="File the text under this name "
                                             "(meta root; source is NAME/path). Default: the folder's name "
                                             "(two folders of one name share it: give each its own). "
                                             "--append and --prune touch only this root's files.",
                                             show_default=False)] = None,
    wait: WaitOpt = 0.0,
    encrypt: EncryptOpt = False,
    recipient: RecipientOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ingest text files (chunked; path, chunk and file SHA-256 kept in meta) or JSONL records.

    A folder's .txt, .md, .markdown, .rst and .text files are read (any case); files of other types
    are ignored with one warning, and files that are not UTF-8 are skipped with a warning. One file is
    read as text or, named .jsonl or .ndjson, as JSONL. The vector index is built and stored in the
    capsule, so it opens straight to search. The record count includes only what was packed: `capsule
    open` also counts the capsule's vindex record (its vector index parameters). Re-running `--append` on the same folder keeps the capsule in
    sync with it: unchanged files add nothing, changed ones replace their chunks, a pack killed
    midway (kill -9, a crash) is completed; files gone from the folder (deleted, renamed) leave only
    with --prune. A new pack stopped by Ctrl-C or a signal leaves no capsule (pack it again).
    Files are filed under the folder's name (--root): folders packed into one capsule stay
    apart, and --append or --prune of one never touches another's.

    Examples:
      capsule pack docs/ -o docs.capsule
      capsule pack memories.jsonl -o agent.capsule --embedder none
      capsule pack docs/ -o docs.capsule --append --prune
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    def go() -> capsule.PackReport:
        emb: Any = None if embedder == "none" else embedder
        kw: dict[str, Any] = {"embedder": emb, "batch": batch, "append": append, "warn": warn,
                              "timeout": wait or None, "prune": prune, "root": root}
        enc = encryption(encrypt, recipient)  # 10: a new capsule sealed for these readers
        if enc and append:
            raise capsule.UsageError("--encrypt is for a new capsule; --append opens one with --identity")
        kw.update({k: v for k, v in enc.items() if k in ("recipients", "passphrase")})
        if json_out or not isatty(sys.stderr):
            return capsule.pack(src, output, **kw)
        with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                      transient=True) as bar:
            task = bar.add_task("packing", total=None)
            # the index is built inside pack, so an interrupt there also leaves nothing behind
            return capsule.pack(src, output, progress=lambda done, total: bar.update(task, completed=done, total=total),
                                on_index=lambda: bar.update(task, description="indexing"), **kw)

    rep = call(go)
    if json_out:
        emit_json(rep.to_dict())
        return
    parts = [f"packed {_plural(rep.files, 'file')} into {_plural(rep.records, 'record')}"]
    if rep.vectors and not append:  # `capsule open` counts it too
        parts[0] += " (+1 vindex record: the vector index parameters)"
    if rep.new != rep.records:
        parts.append(f"{rep.new} new")
    if rep.vectors:
        how = f"{rep.embedder} embedder" if rep.embedder else "embeddings from the input"
        parts.append(f"{_plural(rep.vectors, 'vector')} ({how})")
    if rep.skipped:
        parts.append(f"{len(rep.skipped)} skipped")
    sy = rep.sync
    if append and (sy.unchanged.files or sy.changed.files or sy.resumed.files or sy.pruned.files):
        parts += [f"{n} {what}" for n, what in ((sy.unchanged.files, "unchanged"), (sy.changed.files, "changed"),
                                                 (sy.resumed.files, "resumed"), (sy.pruned.files, "pruned"))
                  if n]
        if sy.superseded.chunks or sy.pruned.chunks:
            parts.append(f"{_plural(sy.superseded.chunks + sy.pruned.chunks, 'old chunk')} left the state")
    out.print(f"{', '.join(parts)}: {output} ({_plural(rep.bytes, 'byte')})")
