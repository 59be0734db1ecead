"""Store commands: create a capsule, add records, summarise it, list its commits."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

import capsule
from capsule import DataError
from capsule.ingest.jsonl import loads, read_jsonl

from ._errors import EXIT_DATA, EXIT_USAGE, call, fail
from ._params import AtOpt, FileArg, JsonOpt, parse_meta
from ._render import cell, emit_json, out, warn


def init(path: FileArg, json_out: JsonOpt = False) -> None:
    """Create a new, empty capsule.

    Example: capsule init agent.capsule
    """

    def go() -> dict[str, Any]:
        with capsule.create(path) as cap:
            return {"file": str(path), "file_id": cap.file_id, "state_root": cap.state_root}

    info = call(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"created {path} (file id {info['file_id']})", markup=False)


@contextlib.contextmanager
def _close_warning(cap: capsule.Capsule) -> Iterator[None]:
    """After a successful write, a failed optional index on close is a warning."""
    try:
        yield
    finally:
        cap.close()
        if cap.close_error is not None:
            warn(f"the commit is durable, but the final index was not written "
                 f"({cap.close_error}); the next open may be slower")


def _jsonl(source: str) -> Iterator[tuple[int, Any]]:
    """Parse JSONL strictly as UTF-8 (stdin too: no surrogate escapes)."""
    if source == "-":
        stream = sys.stdin.buffer
    else:
        p = Path(source)
        if not p.exists():
            fail(f"{source}: no such file", EXIT_USAGE)
        if p.is_dir():
            fail(f"{source}: is a directory", EXIT_USAGE)
        stream = p.open("rb")
    try:
        yield from read_jsonl(stream)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def put(
    path: FileArg,
    text: Annotated[str | None, typer.Option("--text", help="Text of one memory.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata (repeatable).")] = None,
    jsonl: Annotated[
        str | None,
        typer.Option("--jsonl", help='JSONL file (or - for stdin), one record per line: {"text", "tags"?, '
                     '"meta"?, "embedding"?, "kind"?}. The whole file is one commit.'),
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Record kind for --json-body (memory, decision, "
                                             "constraint, approval, identity, note).")] = None,
    json_body: Annotated[str | None, typer.Option("--json-body", help="The record's fields as one JSON object.")]
    = None,
    json_out: JsonOpt = False,
) -> None:
    """Add records: --text (a memory), --kind with --json-body (any kind), or --jsonl (a batch).

    Each call is one atomic commit.

    Examples:
      capsule put agent.capsule --text "deploys freeze on Fridays" --tag ops --meta team=infra
      capsule put agent.capsule --kind decision --json-body '{"summary": "use canary deploys"}'
      capsule put agent.capsule --jsonl memories.jsonl --json
    """
    if (kind is None) != (json_body is None):
        fail("--kind and --json-body go together", EXIT_USAGE)
    if json_body is not None:
        if text is not None or jsonl is not None or tag or meta:
            fail("--json-body stands alone: no --text, --jsonl, --tag or --meta", EXIT_USAGE)
        body = call(partial(loads, json_body, "--json-body: "))
        if not isinstance(body, dict):
            fail("--json-body must be a JSON object", EXIT_DATA)
        if "kind" in body and body["kind"] != kind:
            fail(f"--kind {kind} disagrees with the body's kind {body['kind']!r}", EXIT_USAGE)
        jsonl = "\0body"
        body = {**body, "kind": kind}
    if (text is None) == (jsonl is None):
        fail("give exactly one of --text, --jsonl or --kind with --json-body", EXIT_USAGE)
    if jsonl is not None and (tag or meta):
        fail("--tag and --meta go with --text; put tags and meta inside the JSONL lines", EXIT_USAGE)
    if not path.is_file():
        fail(f"{path}: no such capsule (create it with `capsule init`)", EXIT_USAGE)
    meta_map = parse_meta(meta or [])

    def go() -> tuple[list[str], int]:
        # Parse the whole input before the writer is opened; records are
        # validated inside the commit, and a bad one discards the batch, so a
        # failed put leaves the capsule byte-for-byte as it was.
        if jsonl == "\0body":
            lines = [(1, body)]
        else:
            lines = list(_jsonl(jsonl)) if jsonl is not None else []
        with capsule.open(path, "a") as cap, _close_warning(cap):
            with cap.commit() as tx:
                if text is not None:
                    ids = [tx.remember(text, tags=tag or [], meta=meta_map)]
                else:
                    ids = []
                    for n, obj in lines:
                        try:
                            ids.append(tx.put_value(obj))
                        except DataError as e:
                            where = "--json-body" if jsonl == "\0body" else f"line {n}"
                            raise capsule.InvalidRecordError(f"{where}: {e}") from None
            return ids, len(tx.new_ids)

    ids, new = call(go)
    if json_out:
        emit_json({"count": len(ids), "ids": ids, "new": new})
    elif text is not None or jsonl == "\0body":
        out.print(ids[0] + ("" if new else "  (already in the capsule)"), markup=False)
    else:
        dup = len(ids) - new
        noun = "record" if new == 1 else "records"
        out.print(f"{new} {noun} committed" + (f" ({dup} already in the capsule)" if dup else ""))


def open_(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None) -> None:
    """Summarise a capsule: ids, version, commits, records by kind, size, state root.

    Example: capsule open agent.capsule --json
    """

    def go() -> dict[str, Any]:
        with capsule.open(path, at=at) as cap:
            info = cap.index_info()
            vec = info["vectors"]
            if vec is not None:
                snap = info["snapshot"]
                vec = {**vec, "snapshot_vectors": snap["vectors"] if snap else 0,
                       "snapshot_bytes": snap["bytes"] if snap else 0}
            return {**cap.summary().to_dict(), "vector_index": vec}

    s = call(go)
    if json_out:
        emit_json(s)
        return
    for k in ("file", "file_id", "format_version", "commits", "records", "bytes", "state_root",
              "last_commit_time"):
        out.print(f"{k:<17} {s[k]}", markup=False)
    for kind, n in s["records_by_kind"].items():
        out.print(f"  {kind:<15} {n}", markup=False)
    v = s["vector_index"]
    if v is not None:
        made = f", embedder {v['embedder']}" if v["embedder"] else ""
        out.print(f"vector index      {v['space']}, dim {v['dim']}{made}; snapshot of {v['snapshot_vectors']} "
                  f"vectors ({v['snapshot_bytes']} bytes)", markup=False)
    if s["torn_tail_bytes"]:
        out.print(f"torn tail         {s['torn_tail_bytes']} bytes (ignored; the next writer truncates it)")


def log(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None) -> None:
    """List every commit: seq, offset, end offset, records, time, Merkle root.

    Example: capsule log agent.capsule
    """

    def go() -> list[dict[str, Any]]:
        with capsule.open(path, at=at) as cap:
            return [r.to_dict() for r in cap.log()]

    rows = call(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("commit", "seq", "offset", "end", "records", "time", "root")
    for r in rows:
        t.add_row(*(cell(x) for x in (r["commit"], r["seq"], r["offset"], r["end"], r["records"], r["time"],
                                      r["root"][:16])))
    out.print(t)
