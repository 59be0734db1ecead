"""Store commands: create a capsule, add records, summarise it, list its commits."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

import capsule
from capsule import DataError
from capsule.ingest.jsonl import JsonLines, loads
from capsule.ingest.source import open_regular

from ._errors import EXIT_DATA, EXIT_USAGE, call, fail
from ._keys import EncryptOpt, RecipientOpt, encryption
from ._params import META_RULE, AtOpt, FileArg, JsonOpt, WaitOpt, parse_meta
from ._render import Table, cell, emit_json, out, warn, write_out


def init(path: FileArg, encrypt: EncryptOpt = False, recipient: RecipientOpt = None,
         json_out: JsonOpt = False) -> None:
    """Create a new, empty capsule.

    With --encrypt its contents are sealed at rest (spec 10) for each --recipient (a
    capsule public key, as `capsule keygen` writes it) and/or the passphrase in
    --passphrase-env VAR; reading it then needs --identity KEY or that passphrase.

    Examples:
      capsule init agent.capsule
      capsule init agent.capsule --encrypt --recipient agent.key.pub
    """

    def go() -> dict[str, Any]:
        with capsule.create(path, **encryption(encrypt, recipient)) as cap:
            return {"file": str(path), "file_id": cap.file_id, "state_root": cap.state_root,
                    "encrypted": cap.encrypted}

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


def _open_jsonl(source: str) -> BinaryIO:
    """The JSONL input: stdin for ``-``, else a regular file (never a FIFO or device)."""
    if source == "-":
        return sys.stdin.buffer
    p = Path(source)
    if not p.exists():
        fail(f"{source}: no such file", EXIT_USAGE)
    if p.is_dir():
        fail(f"{source}: is a directory", EXIT_USAGE)
    return open_regular(p, "--jsonl ")


def _emit_ids(ids: bytes | bytearray, new: int) -> None:
    """``{"count", "ids", "new"}`` as emit_json would print it, written in pieces
    (a million ids need not become a million strings at once)."""
    n = len(ids) // 32
    write_out(f'{{"count": {n}, "ids": [')
    for lo in range(0, n, 4096):
        sep = ", " if lo else ""
        write_out(sep + ", ".join(f'"{ids[i * 32 : i * 32 + 32].hex()}"' for i in range(lo, min(n, lo + 4096))))
    write_out(f'], "new": {new}}}\n')


def put(
    path: FileArg,
    text: Annotated[str | None, typer.Option("--text", help="Text of one memory.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help=f"KEY=VALUE metadata (repeatable). {META_RULE}")] = None,
    jsonl: Annotated[
        str | None,
        typer.Option("--jsonl", help='JSONL file (or - for stdin), one record per line: {"text", "tags"?, '
                     '"meta"?, "embedding"?, "kind"?}. The whole file is one commit.'),
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Record kind for --json-body (memory, decision, "
                                             "constraint, approval, identity, note).")] = None,
    json_body: Annotated[str | None, typer.Option("--json-body", help="The record's fields as one JSON object. "
                                                  "Record ids in it (a decision's evidence, an approval's subject) "
                                                  "may be unique prefixes of >= 4 hex digits.")]
    = None,
    batch: Annotated[int | None, typer.Option("--batch", metavar="N", min=1, max=10_000_000, show_default=False,
                                              help="With --jsonl: commit every N lines, each batch atomic (for "
                                              "a stream too long for one commit: a failure keeps the batches "
                                              "before it). Without it the input is one commit of at most "
                                              "10,000,000 lines.")] = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Add records: --text (a memory), --kind with --json-body (any kind), or --jsonl (a batch).

    Each call is one atomic commit (--jsonl --batch N: one every N lines). --meta n=5 stores the number 5, --meta
    'n="5"' the text 5 (search --meta reads VALUEs the same way).

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
    if batch is not None and (jsonl is None or jsonl == "\0body"):
        fail("--batch goes with --jsonl", EXIT_USAGE)
    if path.is_dir():
        fail(f"{path}: is a directory, not a capsule", EXIT_USAGE)
    if not path.is_file():
        fail(f"{path}: no such capsule (create it with `capsule init`)", EXIT_USAGE)
    meta_map = parse_meta(meta or [])

    def go() -> tuple[bytes | bytearray, int]:
        # The JSONL is streamed into one commit through the bulk path (put_many): each
        # line is decoded, checked and encoded as it is read and only its encoded record
        # is kept, compactly; a bad line, an over-long one (spec 11) or an interrupt
        # discards the whole batch, so a failed put leaves the capsule as it was.
        stream = _open_jsonl(jsonl) if jsonl is not None and jsonl != "\0body" else None
        ids: bytes | bytearray = bytearray()  # raw 32-byte ids, in input order
        got: Any = None  # put_many's ids
        try:
            if stream is not None and batch is not None:
                with capsule.open(path, "a", timeout=wait or None) as cap, _close_warning(cap):
                    return _batched(cap, JsonLines(stream, _where(str(jsonl)), max_lines=None), batch)
            with capsule.open(path, "a", timeout=wait or None) as cap, _close_warning(cap), cap.commit() as tx:
                if text is not None:
                    ids += bytes.fromhex(tx.remember(text, tags=tag or [], meta=meta_map))
                elif stream is not None:
                    lines = JsonLines(stream, _where(jsonl))
                    got = tx.put_many(lines, names=lines.name)  # 32 bytes a record, copied when read
                else:
                    try:
                        ids += bytes.fromhex(tx.put_value(body))
                    except DataError as e:
                        raise capsule.InvalidRecordError(f"--json-body: {e}") from None
            # read once the commit is closed: the ids are copied after the index is built (F22)
            return (got.raw if stream is not None else ids), len(tx.new_ids)
        finally:
            if stream is not None and stream is not sys.stdin.buffer:
                stream.close()

    ids, new = call(go)
    if json_out:
        _emit_ids(ids, new)
    elif text is not None or jsonl == "\0body":
        out.print(ids.hex() + ("" if new else "  (already in the capsule)"))
    else:
        dup = len(ids) // 32 - new
        noun = "record" if new == 1 else "records"
        out.print(f"{new} {noun} committed" + (f" ({dup} already in the capsule)" if dup else ""))


def _where(jsonl: str) -> str:
    return "stdin " if jsonl == "-" else f"{Path(jsonl).name} "


def _batched(cap: Any, lines: JsonLines, size: int) -> tuple[bytearray, int]:
    """``put --jsonl --batch N``: one commit every ``size`` lines (each atomic; a failure keeps
    the commits before it); the ids in input order and the records the commits added."""
    from itertools import islice

    it, ids, new = iter(lines), bytearray(), 0
    while True:
        chunk, nums = [], []  # each line with its number: an error names the line, not the batch's last
        for raw in islice(it, size):
            chunk.append(raw)
            nums.append(lines.line)
        if not chunk:
            return ids, new
        try:
            with cap.commit() as tx:
                got = tx.put_many(chunk, names=lambda i, nums=nums: f"{lines.where}line {nums[i]}")
        except capsule.CapsuleError as e:
            if new:  # say what stands: the batches before this one are committed
                warn(f"{new} records in the batches before this one are committed and stay")
            raise e
        ids += got.raw  # read once the commit is closed (F22)
        new += len(tx.new_ids)


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
        from capsule.format.pending import torn_fate

        out.print(f"torn tail         {s['torn_tail_bytes']} bytes (ignored; the next writer {torn_fate(path)})")


def log(
    path: FileArg,
    json_out: JsonOpt = False,
    at: AtOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="Only the newest N commits "
                                              "(oldest first, as without it).")] = None,
) -> None:
    """List every commit: seq, offset, end offset, records, time, Merkle root.

    With --limit, only the newest commits are read, so it takes as long on a long history as on a short one.

    Example: capsule log agent.capsule --limit 5
    """

    def go() -> list[dict[str, Any]]:
        with capsule.open(path, at=at) as cap:
            return [r.to_dict() for r in cap.log(limit)]

    rows = call(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("commit", "seq", "offset", "end", "records", "time", "root")
    for r in rows:
        t.add_row(*(cell(x) for x in (r["commit"], r["seq"], r["offset"], r["end"], r["records"], r["time"],
                                      r["root"][:16])))
    out.print(t)
