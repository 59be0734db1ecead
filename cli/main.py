"""The ``capsule`` command: each command parses, calls one library function, renders.

Exit codes: 0 ok; 1 the capsule or the input data is bad; 2 the command was
used wrongly (missing file, bad option, capsule locked). Errors are one line on
stderr; tracebacks are never shown.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import capsule
from capsule import CapsuleError, DataError, UsageError
from capsule.ingest.jsonl import loads, read_jsonl

app = typer.Typer(
    name="capsule",
    help="Portable, crash-safe memory capsules for long-running agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Pipes get a wide console so tables (hashes, times) are not cut at 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

FileArg = Annotated[Path, typer.Argument(help="Path to the capsule file.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AtOpt = Annotated[
    str | None,
    typer.Option("--at", help="View as of a checkpoint label, a seq (the commit that made that frame "
                 "durable), a commit root prefix (>= 4 hex digits) or an ISO-8601 time."),
]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def cell(value: object) -> Text:
    """Table text shown literally: no rich markup, control characters escaped (a
    capsule from another host must not be able to drive the terminal)."""
    text = str(value)
    return Text(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text))


def fail(message: str, code: int) -> NoReturn:
    err.print(f"capsule: error: {message}", markup=False)
    raise typer.Exit(code)


def run(fn: Callable[[], T]) -> T:
    """The one place library errors become exit codes and one-line messages."""
    try:
        return fn()
    except DataError as e:
        fail(str(e), 1)
    except capsule.WriterPoisoned as e:
        fail(str(e), 1)  # the disk or file system failed: not a usage mistake
    except UsageError as e:
        fail(str(e), 2)
    except CapsuleError as e:
        fail(str(e), 1)
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), 2)


def write_out(text: str) -> None:
    """Machine output as UTF-8 whatever the locale's encoding (same bytes everywhere)."""
    sys.stdout.buffer.write(text.encode("utf-8"))


def emit_json(obj: Any) -> None:
    write_out(json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n")


@app.command()
def init(path: FileArg, json_out: JsonOpt = False) -> None:
    """Create a new, empty capsule.

    Example: capsule init agent.capsule
    """

    def go() -> dict[str, Any]:
        with capsule.create(path) as cap:
            return {"file": str(path), "file_id": cap.file_id, "state_root": cap.state_root}

    info = run(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"created {path} (file id {info['file_id']})", markup=False)


def _parse_meta(items: list[str], *, scalars: bool = False) -> dict[str, Any]:
    """KEY=VALUE pairs. With ``scalars`` (search filters) a VALUE that is a JSON
    number, boolean or null is read as one (chunk=0), anything else as text."""
    meta: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--meta expects KEY=VALUE, got {item!r}", 2)
        meta[key] = value
        if scalars:
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                parsed = json.loads(value)
                if isinstance(parsed, int | float | bool) or parsed is None:
                    meta[key] = parsed
    return meta


@contextlib.contextmanager
def _close_warning(cap: capsule.Capsule) -> Iterator[None]:
    """After a successful write, a failed optional index on close is a warning."""
    try:
        yield
    finally:
        cap.close()
        if cap.close_error is not None:
            err.print(f"capsule: warning: the commit is durable, but the final index was not written "
                      f"({cap.close_error}); the next open may be slower", markup=False)


def _jsonl(source: str) -> Iterator[tuple[int, Any]]:
    """Parse JSONL strictly as UTF-8 (stdin too: no surrogate escapes)."""
    if source == "-":
        stream = sys.stdin.buffer
    else:
        p = Path(source)
        if not p.exists():
            fail(f"{source}: no such file", 2)
        if p.is_dir():
            fail(f"{source}: is a directory", 2)
        stream = p.open("rb")
    try:
        yield from read_jsonl(stream)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


@app.command()
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
        fail("--kind and --json-body go together", 2)
    if json_body is not None:
        if text is not None or jsonl is not None or tag or meta:
            fail("--json-body stands alone: no --text, --jsonl, --tag or --meta", 2)
        try:
            body = loads(json_body, "--json-body: ")
        except capsule.InvalidRecordError as e:
            fail(str(e), 1)
        if not isinstance(body, dict):
            fail("--json-body must be a JSON object", 1)
        if "kind" in body and body["kind"] != kind:
            fail(f"--kind {kind} disagrees with the body's kind {body['kind']!r}", 2)
        jsonl = "\0body"
        body = {**body, "kind": kind}
    if (text is None) == (jsonl is None):
        fail("give exactly one of --text, --jsonl or --kind with --json-body", 2)
    if jsonl is not None and (tag or meta):
        fail("--tag and --meta go with --text; put tags and meta inside the JSONL lines", 2)
    if not path.is_file():
        fail(f"{path}: no such capsule (create it with `capsule init`)", 2)
    meta_map = _parse_meta(meta or [])

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

    ids, new = run(go)
    if json_out:
        emit_json({"count": len(ids), "ids": ids, "new": new})
    elif text is not None or jsonl == "\0body":
        out.print(ids[0] + ("" if new else "  (already in the capsule)"), markup=False)
    else:
        dup = len(ids) - new
        noun = "record" if new == 1 else "records"
        out.print(f"{new} {noun} committed" + (f" ({dup} already in the capsule)" if dup else ""))


@app.command("open")
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

    s = run(go)
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


@app.command()
def log(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None) -> None:
    """List every commit: seq, offset, end offset, records, time, Merkle root.

    Example: capsule log agent.capsule
    """

    def go() -> list[dict[str, Any]]:
        with capsule.open(path, at=at) as cap:
            return [r.to_dict() for r in cap.log()]

    rows = run(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("commit", "seq", "offset", "end", "records", "time", "root")
    for r in rows:
        t.add_row(*(cell(x) for x in (r["commit"], r["seq"], r["offset"], r["end"], r["records"], r["time"],
                                      r["root"][:16])))
    out.print(t)


@app.command()
def state(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None) -> None:
    """Show what the agent believes: memories by tier, decisions, constraints, identity.

    Active constraints come with their approvals; --json is canonical (sorted keys, stable).

    Example: capsule state agent.capsule --at 2026-01-05T00:00:00Z --json
    """

    def go() -> tuple[dict[str, Any], str]:
        with capsule.open(path, at=at) as cap:
            s = cap.state()
            return s.to_dict(), s.to_json() if json_out else ""

    st, text = run(go)
    if json_out:
        write_out(text + "\n")
        return
    out.print(f"state root  {st['state_root']}  ({st['records']} records)", markup=False)
    ident = st["identity"]
    if ident:
        out.print(f"identity    {ident['agent_id']} {ident['name']} {ident['model']}".rstrip(), markup=False)
    for tier, mems in st["memories"].items():
        out.print(f"{tier:<11} {len(mems)} memories", markup=False)
        for m in mems[-5:]:
            out.print(f"  {m['id'][:12]}  {m['text'][:100]}", markup=False)
    out.print(f"constraints {len(st['constraints'])} active", markup=False)
    for c in st["constraints"]:
        ok = sum(a["verified"] for a in c["approvals"])
        out.print(f"  [{c['scope']}] {c['text'][:100]}  ({ok} verified approvals)", markup=False)
    out.print(f"decisions   {len(st['decisions'])}", markup=False)
    for d in st["decisions"][-5:]:
        out.print(f"  {d['id'][:12]}  {d['summary'][:100]}", markup=False)


@app.command()
def keygen(
    out_path: Annotated[Path, typer.Option("-o", "--out", help="Where to write the private key (KEY.pub too).")],
    passphrase_env: Annotated[str | None, typer.Option("--passphrase-env", help="Encrypt the key with the "
                                                       "passphrase in this environment variable.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an Ed25519 signing key (mode 0600) and its KEY.pub.

    Example: CAPSULE_PASS=... capsule keygen -o agent.key --passphrase-env CAPSULE_PASS
    """

    def go() -> dict[str, Any]:
        pw = _passphrase(passphrase_env)
        key = capsule.generate_key()
        pub = capsule.save_private_key(out_path, key, passphrase=pw)
        return {"key": str(out_path), "public_key": str(pub), "key_id": key.key_id, "encrypted": pw is not None}

    info = run(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"wrote {info['key']} (key id {info['key_id']}) and {info['public_key']}", markup=False)


KeyOpt = Annotated[Path, typer.Option("--key", help="Private key file (from `capsule keygen`); repeat for "
                                      "a threshold of keys.")]
PassOpt = Annotated[str | None, typer.Option("--passphrase-env", help="Environment variable holding the key's "
                                             "passphrase.")]


def _passphrase(env: str | None) -> bytes | None:
    import os

    if env is None:
        return None
    v = os.environ.get(env)
    if not v:
        raise capsule.UsageError(f"environment variable {env} is not set or empty")
    return v.encode()


def _load_keys(paths: list[Path], passphrase_env: str | None) -> list[capsule.PrivateKey]:
    pw = _passphrase(passphrase_env)
    return [capsule.load_private_key(p, pw) for p in paths]


@app.command()
def checkpoint(
    path: FileArg,
    label: Annotated[str, typer.Option("--label", help="A name for this checkpoint (used by --at and rollback).")],
    key: Annotated[list[Path], typer.Option("--key", help="Private key file; repeat for a threshold of keys.")],
    runtime: Annotated[Path | None, typer.Option("--runtime", help="A file of runtime state to store with it.")]
    = None,
    passphrase_env: PassOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign and commit a checkpoint of the current state.

    Example: capsule checkpoint agent.capsule --label day-1 --key agent.key
    """

    def go() -> dict[str, Any]:
        keys = _load_keys(key, passphrase_env)
        blob = runtime.read_bytes() if runtime is not None else None
        with capsule.open(path, "a") as cap:
            return cap.checkpoint(label, key=keys, runtime_state=blob).to_dict()

    info = run(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"checkpoint {info['label']!r} at seq {info['seq']}, state root {info['state_root']}", markup=False)


@app.command()
def checkpoints(path: FileArg, json_out: JsonOpt = False) -> None:
    """List signed checkpoints: label, seq, state root, signer key ids, time.

    Example: capsule checkpoints agent.capsule --json
    """

    def go() -> list[dict[str, Any]]:
        with capsule.open(path) as cap:
            return [c.to_dict() for c in cap.checkpoints()]

    rows = run(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("label", "seq", "time", "state root", "signers")
    for r in rows:
        t.add_row(*(cell(x) for x in (r["label"], r["seq"], r["time"], r["state_root"][:16],
                                      ", ".join(r["signers"]))))
    out.print(t)


@app.command()
def rollback(
    path: FileArg,
    to: Annotated[str, typer.Option("--to", help="Label of the checkpoint to return to.")],
    key: Annotated[list[Path] | None, typer.Option("--key", help="Sign a checkpoint after the rollback "
                                                   "(repeatable).")] = None,
    passphrase_env: PassOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make the live state equal a checkpoint's again; all history stays in the file.

    Example: capsule rollback agent.capsule --to day-1 --key agent.key
    """

    def go() -> dict[str, Any]:
        keys = _load_keys(key or [], passphrase_env)
        with capsule.open(path, "a") as cap:
            rid = cap.rollback(to, key=keys or None)
            return {"revert": rid, "state_root": cap.state_root, "changed": rid is not None}

    info = run(go)
    if json_out:
        emit_json(info)
    elif info["changed"]:
        out.print(f"rolled back to {to!r}: state root {info['state_root']}", markup=False)
    else:
        out.print(f"already at {to!r} (state root {info['state_root']}): nothing written", markup=False)


@app.command()
def fork(
    path: FileArg,
    out_path: Annotated[Path, typer.Option("-o", "--out", help="The new capsule.")],
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a new capsule from the live state at a point; its LINEAGE names the parent.

    Example: capsule fork agent.capsule --at day-1 -o experiment.capsule
    """

    def go() -> dict[str, Any]:
        with capsule.fork(path, out_path, at=at) as new:
            return {"file": str(out_path), "file_id": new.file_id, "records": len(new),
                    "state_root": new.state_root}

    info = run(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"forked {path} into {info['file']}: {info['records']} records, state root {info['state_root']}",
                  markup=False)


@app.command()
def tasks(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None) -> None:
    """Show the durable task queue: status, attempts, leases, what is due and blocked.

    Example: capsule tasks agent.capsule --json
    """

    def go() -> dict[str, Any]:
        with capsule.open(path, at=at) as cap:
            c = cap._snap.commit
            # a view at an earlier commit is judged at that commit's time; the live
            # capsule at the current time (SOURCE_DATE_EPOCH in reproducible mode)
            if at is not None:
                return cap.tasks.to_dict(now=c.time if c else 0)
            from capsule.core.clock import default_clock

            return cap.tasks.to_dict(now=default_clock()())

    q = run(go)
    if json_out:
        emit_json(q)
        return
    t = Table("task", "status", "attempts", "worker", "due")
    due = {d if isinstance(d, str) else d.get("id") for d in q.get("due") or []}
    for st in q.get("tasks", []):
        name = st["id"]
        mark = "yes" if name in due else ("blocked" if st.get("blocked_by") else "")
        t.add_row(*(cell(x) for x in (name, st.get("status"), st.get("attempts", 0), st.get("worker") or "", mark)))
    out.print(t)


@app.command()
def actions(
    path: FileArg,
    json_out: JsonOpt = False,
    in_doubt: Annotated[bool, typer.Option("--in-doubt", help="Only actions whose outcome is unknown.")] = False,
    resolve: Annotated[str | None, typer.Option("--resolve", help="Settle this in-doubt action key.")] = None,
    done: Annotated[bool | None, typer.Option("--done/--not-done", help="With --resolve: the effect happened, "
                                              "or it did not (the next run_once runs it).")] = None,
    value: Annotated[str | None, typer.Option("--value", help="With --resolve --done: the result, as JSON.")]
    = None,
) -> None:
    """List the idempotent-action journal: keys, status, times, results; settle in-doubt ones.

    Example: capsule actions agent.capsule --resolve email:42 --done --value '{"id": "m-1"}'
    """
    if resolve is None and (done is not None or value is not None):
        fail("--done/--not-done and --value go with --resolve", 2)
    if resolve is not None and done is None:
        fail("--resolve needs --done or --not-done", 2)
    if value is not None and not done:
        fail("--value goes with --done", 2)
    if resolve is not None and in_doubt:
        fail("--in-doubt lists; --resolve settles: give one of them", 2)
    if resolve is not None and not resolve.strip():
        fail("--resolve needs a non-empty action key", 2)

    def go() -> list[dict[str, Any]]:
        if resolve is not None:
            v = loads(value, "--value: ") if value is not None else None
            with capsule.open(path, "a") as cap:
                return [cap.resolve_action(resolve, done=bool(done), value=v).to_dict()]
        with capsule.open(path) as cap:
            rows = [a.to_dict() for a in cap.actions()]
        return [r for r in rows if r["status"] == "in-doubt"] if in_doubt else rows

    rows = run(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("key", "status", "attempt", "started", "finished", "result")
    for r in rows:
        res = r["error"] if r["status"] == "failed" else json.dumps(r["value"], ensure_ascii=False)
        t.add_row(*(cell(x) for x in (r["key"][:200], r["status"], r["attempt"], r["started"] or "",
                                      r["finished"] or "", res[:60])))
    out.print(t)


@app.command()
def verify(
    path: FileArg,
    json_out: JsonOpt = False,
    trust: Annotated[str | None, typer.Option("--trust", help="Trust anchor for checkpoint signatures: a KEY.pub "
                                              "file or a keyset hash (64 hex digits).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail when signatures are present but not anchored.")]
    = False,
    parent: Annotated[Path | None, typer.Option("--parent", help="For a fork: check its LINEAGE against this "
                                                "parent capsule.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Structure, chain and Merkle roots only; "
                                        "skip per-record schema checks.")] = False,
) -> None:
    """Check every byte: header, frames, chain, Merkle roots, content ids, encoding.

    Exit 0 when sound, 1 when not (naming the first bad offset, seq and check).
    Example: capsule verify agent.capsule --json
    """
    from rich.progress import BarColumn, Progress, TransferSpeedColumn

    def go() -> capsule.VerifyReport:
        if not path.exists():
            raise capsule.CapsuleNotFound(f"{path}: no such capsule")
        size = path.stat().st_size
        show = not json_out and sys.stderr.isatty() and size > 64 << 20
        anchor: Any = None
        if trust is not None:
            tp = Path(trust)
            if tp.is_file():
                anchor = capsule.load_public_key(tp)
            elif len(trust) == 64 and all(c in "0123456789abcdefABCDEF" for c in trust):
                anchor = trust.lower()
            else:
                raise capsule.UsageError(f"--trust {trust!r} is neither a key file nor a keyset hash")
        kw: dict[str, Any] = {"deep": not quick, "trust": anchor, "strict": strict, "parent": parent}
        if not show:
            return capsule.verify(path, **kw)
        with Progress("verifying", BarColumn(), TransferSpeedColumn(), console=err, transient=True) as bar:
            task = bar.add_task("verify", total=size)
            return capsule.verify(path, progress=lambda done, _t: bar.update(task, completed=done), **kw)

    rep = run(go)
    if json_out:
        emit_json(rep.to_dict())
    elif rep.ok:
        extra = ""
        if rep.checkpoints:
            extra = f", {rep.checkpoints} checkpoints" + (" (signatures anchored)" if rep.anchored else "")
        if rep.lineage:
            extra += f", fork of {rep.lineage['parent']} at seq {rep.lineage['tree_size']}"
        out.print(f"ok: {rep.commits} commits, {rep.records} records, {rep.frames} frames, {rep.bytes} bytes{extra}")
        for w in rep.warnings:
            err.print(f"capsule: warning: {w}", markup=False)
    else:
        e = rep.first_error or {}
        where = ", ".join(f"{k} {e[k]}" for k in ("offset", "seq") if e.get(k) is not None)
        err.print(f"capsule: verify failed: {e.get('check')}{' at ' + where if where else ''}: {e.get('message')}",
                  markup=False)
    if not rep.ok:
        raise typer.Exit(1)


def _load_vector(source: Path) -> Any:
    import numpy as np

    if not source.is_file():
        raise capsule.UsageError(f"--vector {source}: no such file")
    if source.suffix.lower() == ".npy":
        try:
            v = np.load(source, allow_pickle=False)  # never unpickle a file we were handed
        except (ValueError, OSError) as e:
            raise capsule.UsageError(f"--vector {source}: not a numeric .npy array ({e})") from None
    elif source.suffix.lower() == ".json":
        try:
            v = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise capsule.UsageError(f"--vector {source}: not a JSON list of numbers") from None
        if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            raise capsule.UsageError(f"--vector {source}: not a JSON list of numbers")
        v = np.array(v, np.float64)
    else:
        raise capsule.UsageError(f"--vector {source}: expected a .npy or .json file")
    if v.dtype.kind not in "fiu" or v.size == 0 or (v.ndim != 1 and not (v.ndim == 2 and v.shape[0] == 1)):
        raise capsule.UsageError(f"--vector {source}: expected one vector of numbers, got shape {v.shape}")
    return v.reshape(-1)


@app.command()
def search(
    path: FileArg,
    query: Annotated[str, typer.Argument(help="What to look for (text). May be empty with --vector.",
                                         show_default=False)] = "",
    k: Annotated[int, typer.Option("-k", "--top", help="How many results.", min=1, max=10000)] = 10,
    mode: Annotated[str, typer.Option("--mode", help="auto, lexical (BM25), vector or hybrid (both, fused by "
                                      "reciprocal rank). auto: hybrid when the capsule's vectors came from a "
                                      "semantic embedder (minilm, st:...), else lexical.")] = "auto",
    vector: Annotated[Path | None, typer.Option("--vector", help="Query vector: a .npy array or a .json list.")]
    = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only records with this tag (repeatable: all).")]
    = None,
    any_tag: Annotated[list[str] | None, typer.Option("--any-tag", help="Only records with at least one of these "
                                                      "tags (repeatable).")] = None,
    tier: Annotated[list[str] | None, typer.Option("--tier", help="scratch, working or validated (repeatable).")]
    = None,
    kind: Annotated[list[str] | None, typer.Option("--kind", help="memory, note or decision (repeatable).")]
    = None,
    since: Annotated[str | None, typer.Option("--since", help="Only records at or after this ISO-8601 time.")]
    = None,
    until: Annotated[str | None, typer.Option("--until", help="Only records at or before this ISO-8601 time.")]
    = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE: only records whose meta has it "
                                                   "(repeatable).")] = None,
    embedder: Annotated[str | None, typer.Option("--embedder", help="Embed the query with this embedder (default: "
                                                 "the one the capsule was packed with).")] = None,
    ef: Annotated[int, typer.Option("--ef", help="HNSW search breadth (higher: better recall, slower).",
                                    min=1, max=100000)] = 64,
    json_out: JsonOpt = False,
    at: AtOpt = None,
) -> None:
    """Search memories by words (BM25), by meaning (vectors) or both.

    Expired and rolled-back records are never returned; results are exactly
    scored, best first, ties broken by record id, the same on every host.

    Examples:
      capsule search notes.capsule "deploy freeze" -k 5
      capsule search notes.capsule "deploy freeze" --mode lexical --tag ops --since 2026-01-01
      capsule search agent.capsule --vector q.npy --json
    """
    meta_map = _parse_meta(meta or [], scalars=True)
    if not query.strip() and vector is None:
        fail("give a QUERY text, a query --vector, or both", 2)

    def go() -> tuple[list[dict[str, Any]], list[str]]:
        if not path.exists():
            raise capsule.CapsuleNotFound(f"{path}: no such capsule")
        qv = _load_vector(vector) if vector is not None else None
        with capsule.open(path) as cap:
            view = cap.view(at) if at is not None else contextlib.nullcontext(cap)
            with view as c:
                hits = c.search(query, vector=qv, k=k, mode=mode, tags=tag, any_tags=any_tag, tier=tier,
                                kind=kind, since=since, until=until, meta=meta_map, embedder=embedder, ef=ef)
                info = c.index_info()
                return [h.to_dict() for h in hits], [m for m in (info["doubt"], info["notice"]) if m]

    hits, warnings = run(go)
    for w in warnings:
        err.print(f"capsule: warning: {w}", markup=False)
    if json_out:
        emit_json(hits)
        return
    if not hits:
        out.print("no results")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("#", "score", "kind", "time", "tags", "text", "id"):
        table.add_column(col, no_wrap=col != "text", overflow="fold")
    for i, h in enumerate(hits, 1):
        text = " ".join(h["text"].split())
        table.add_row(str(i), f"{h['score']:.4f}", cell(h["kind"]), cell(h["time"][:19]), cell(",".join(h["tags"])),
                      cell(text[:117] + "..." if len(text) > 120 else text), cell(h["id"][:12]))
    out.print(table)


@app.command()
def pack(
    src: Annotated[Path, typer.Argument(help="A folder of .txt/.md files (or one), or a .jsonl file of records.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The capsule to write.", show_default=False)],
    embedder: Annotated[str, typer.Option("--embedder", help="hash (offline hashed word/char n-grams), minilm "
                                          "(needs agent-capsule[minilm]), st:<model dir>, or none. auto: hash, "
                                          "unless the JSONL records carry their own embeddings.")] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Records per commit.", min=1)] = 1000,
    append: Annotated[bool, typer.Option("--append", help="Add to an existing capsule.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Ingest text/markdown files (chunked; path and chunk kept in meta) or JSONL.

    Files that are not UTF-8 are skipped with a warning. The vector index is built
    and stored in the capsule, so it opens straight to search.

    Examples:
      capsule pack docs/ -o docs.capsule
      capsule pack memories.jsonl -o agent.capsule --embedder none
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    def go() -> capsule.PackReport:
        emb: Any = None if embedder == "none" else embedder

        def warn(message: str) -> None:
            err.print(f"capsule: warning: {message}", markup=False)

        if json_out or not sys.stderr.isatty():
            return capsule.pack(src, output, embedder=emb, batch=batch, append=append, warn=warn)
        with Progress("packing", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                      transient=True) as bar:
            task = bar.add_task("pack", total=None)
            rep = capsule.pack(src, output, embedder=emb, batch=batch, append=append, warn=warn,
                               progress=lambda done, total: bar.update(task, completed=done, total=total),
                               build=False)
            bar.update(task, description="indexing")
        with capsule.open(output, "a") as cap:
            if cap.vector_config() is not None:
                err.print("building the vector index...", markup=False)
                cap.build_index()
                cap.save_index()
        rep.bytes = output.stat().st_size
        return rep

    rep = run(go)
    if json_out:
        emit_json(rep.to_dict())
    else:
        skipped = f", {len(rep.skipped)} skipped" if rep.skipped else ""
        vec = f", {rep.vectors} vectors ({rep.embedder})" if rep.vectors else ""
        out.print(f"packed {rep.files} files into {rep.records} records{vec}{skipped}: {output} "
                  f"({rep.bytes} bytes)", markup=False)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Portable, crash-safe memory capsules for long-running agents."""
    if version:
        out.print(f"capsule {capsule.__version__} (format {capsule.FORMAT_VERSION})")
        raise typer.Exit(0)


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=True)
        sys.stdout.flush()
    except KeyboardInterrupt:
        err.print("capsule: interrupted")
        sys.exit(130)
    except SystemExit as e:
        try:
            sys.stdout.flush()
        except OSError as oe:
            sys.stderr.write(f"capsule: error: cannot write output: {oe.strerror or oe}\n")
            sys.exit(1)
        raise e from None
    except OSError as e:  # e.g. stdout is /dev/full or a closed pipe
        sys.stderr.write(f"capsule: error: cannot write output: {e.strerror or e}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
