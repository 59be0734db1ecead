"""State and trust commands: what the agent believes, signing keys, checkpoints,
rollback, forks, and the byte-level verifier that checks all of it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import capsule
from capsule.core import constants as C
from capsule.ingest.source import check_regular, read_regular

from ._errors import EXIT_DATA, call
from ._params import AtOpt, FileArg, JsonOpt, ValidAtOpt, WaitOpt, valid_at_iso
from ._render import Table, cell, emit_json, err, escape_json, isatty, out, warn

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
    for p in paths:
        check_regular(p, "--key ")
    pw = _passphrase(passphrase_env)
    return [capsule.load_private_key(p, pw) for p in paths]


def state(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None, valid_at: ValidAtOpt = None) -> None:
    """Show what the agent believes: memories by tier, decisions, constraints, identity.

    Active constraints come with their approvals; --json is canonical (sorted keys, stable).
    --valid-at keeps the memories true at that world time (the document says which).

    Examples:
      capsule state agent.capsule --at 2026-01-05T00:00:00Z --json
      capsule state agent.capsule --valid-at 2025-06-01 --json
    """
    when = call(lambda: valid_at_iso(valid_at))

    def go() -> Any:
        with capsule.open(path, at=at) as cap:
            return cap.state(valid_at=when)

    state = call(go)
    if json_out:  # the library's canonical document (13.2): sorted keys, compact, bin values as hex
        sys.stdout.buffer.write(escape_json(call(state.to_json_bytes)) + b"\n")  # C1 and bidi escaped
        return
    st = state.to_dict()
    out.print(f"state root  {st['state_root']}  ({st['records']} records)", markup=False)
    if "valid_at" in st:
        out.print(f"valid at    {st['valid_at']}", markup=False)
    ident = st["identity"]
    if ident:
        out.print(f"identity    {ident['agent_id']} {ident['name']} {ident['model']}".rstrip(), markup=False)
    for tier, mems in st["memories"].items():
        out.print(f"{tier:<11} {len(mems)} memories", markup=False)
        for m in mems[-5:]:
            out.print(f"  {m['id'][:12]}  {m.get('text', '[redacted]')[:100]}", markup=False)
    out.print(f"constraints {len(st['constraints'])} active", markup=False)
    for c in st["constraints"]:
        ok = sum(a["verified"] for a in c["approvals"])
        out.print(f"  [{c['scope']}] {c['text'][:100]}  ({ok} verified approvals)", markup=False)
    out.print(f"decisions   {len(st['decisions'])}", markup=False)
    for d in st["decisions"][-5:]:
        out.print(f"  {d['id'][:12]}  {d.get('summary', '[redacted]')[:100]}", markup=False)


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

    info = call(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"wrote {info['key']} (key id {info['key_id']}) and {info['public_key']}", markup=False)


def checkpoint(
    path: FileArg,
    label: Annotated[str, typer.Option("--label", help="A name for this checkpoint (used by --at and rollback).")],
    key: Annotated[list[Path], typer.Option("--key", help="Private key file; repeat for a threshold of keys.")],
    runtime: Annotated[Path | None, typer.Option("--runtime", help="A file of runtime state to store with it.")]
    = None,
    passphrase_env: PassOpt = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Sign and commit a checkpoint of the current state.

    Example: capsule checkpoint agent.capsule --label day-1 --key agent.key
    """

    def go() -> dict[str, Any]:
        keys = _load_keys(key, passphrase_env)
        blob = None if runtime is None else read_regular(runtime, C.MAX_RUNTIME_BYTES, "a checkpoint's runtime blob",
                                                         "--runtime ")
        with capsule.open(path, "a", timeout=wait or None) as cap:
            return cap.checkpoint(label, key=keys, runtime_state=blob).to_dict()

    info = call(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"checkpoint {info['label']!r} at seq {info['seq']}, state root {info['state_root']}", markup=False)


def checkpoints(path: FileArg, json_out: JsonOpt = False) -> None:
    """List signed checkpoints: label, seq, state root, signer key ids, time.

    Example: capsule checkpoints agent.capsule --json
    """

    def go() -> list[dict[str, Any]]:
        with capsule.open(path) as cap:
            return [c.to_dict() for c in cap.checkpoints()]

    rows = call(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("label", "seq", "time", "state root", "signers")
    for r in rows:
        t.add_row(*(cell(x) for x in (r["label"], r["seq"], r["time"], r["state_root"][:16],
                                      ", ".join(r["signers"]))))
    out.print(t)


def rollback(
    path: FileArg,
    to: Annotated[str, typer.Option("--to", help="Label of the checkpoint to return to.")],
    key: Annotated[list[Path] | None, typer.Option("--key", help="Sign a checkpoint after the rollback "
                                                   "(repeatable).")] = None,
    passphrase_env: PassOpt = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Make the live state equal a checkpoint's again; all history stays in the file.

    Example: capsule rollback agent.capsule --to day-1 --key agent.key
    """

    def go() -> dict[str, Any]:
        keys = _load_keys(key or [], passphrase_env)
        with capsule.open(path, "a", timeout=wait or None) as cap:
            rid = cap.rollback(to, key=keys or None)
            ck = cap.find_checkpoint(to)
            # 7.7.1: a record redacted since the checkpoint is not restored, so the roots may differ
            return {"revert": rid, "state_root": cap.state_root, "changed": rid is not None,
                    "matches_checkpoint": ck is not None and ck.state_root == cap.state_root}

    info = call(go)
    if json_out:
        emit_json(info)
    elif info["changed"]:
        out.print(f"rolled back to {to!r}: state root {info['state_root']}"
                  + ("" if info["matches_checkpoint"] else " (records redacted since stay gone)"), markup=False)
    else:
        out.print(f"already at {to!r} (state root {info['state_root']}): nothing written"
                  + ("" if info["matches_checkpoint"] else " (but for records redacted since, which stay gone)"),
                  markup=False)


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

    info = call(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"forked {path} into {info['file']}: {info['records']} records, state root {info['state_root']}",
                  markup=False)


def verify(
    path: FileArg,
    json_out: JsonOpt = False,
    trust: Annotated[str | None, typer.Option("--trust", help="Trust anchor for checkpoint signatures: a KEY.pub "
                                              "file or a keyset hash (64 hex digits).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on every warning: a torn tail, signatures not "
                                         "anchored, no signed checkpoint, records past the signed prefix. "
                                         "Passes only with --trust.")] = False,
    min_seq: Annotated[int | None, typer.Option("--min-seq", min=0, help="Pin: the signed prefix (or, without "
                                                "--trust, the last commit) must reach this frame seq.")] = None,
    expect_root: Annotated[str | None, typer.Option("--expect-root", help="Pin: a commit with this Merkle root "
                                                    "(`root` in `capsule log --json`) must be in the file.")] = None,
    parent: Annotated[list[Path] | None, typer.Option("--parent", help="For a fork or a compacted file: check its "
                                                      "LINEAGE (and what compaction kept) against this parent; "
                                                      "give it twice for a merged file (spec 20.8).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Structure, chain and Merkle roots only; "
                                        "skip per-record schema checks.")] = False,
    policy: Annotated[bool, typer.Option("--policy", help="Re-check every action against the constraint rules "
                                         "in force at its intent (spec 7.3.1); prints the violations as a "
                                         "JSON list.")] = False,
) -> None:
    """Check every byte: header, frames, chain, Merkle roots, content ids, encoding.

    Exit 0 when sound, 1 when not (naming the first bad offset, seq and check).
    With --trust, a checkpoint signed by the anchored keys must cover the state (spec 13.4).
    With --policy, every action must have had the approvals its rules asked for (7.3.1).
    Example: capsule verify agent.capsule --trust agent.key.pub --strict --json
    """

    def go() -> capsule.VerifyReport:
        if not path.exists():
            raise capsule.CapsuleNotFound(f"{path}: no such capsule")
        size = path.stat().st_size
        show = not json_out and isatty(sys.stderr) and size > 64 << 20
        anchor: Any = None
        for pp in parent or []:
            check_regular(pp, "--parent ")
        if parent and len(parent) > 2:
            raise capsule.UsageError("--parent: one parent (a fork, a compacted file) or two (a merged file)")
        if trust is not None:
            tp = Path(trust)
            check_regular(tp, "--trust ")
            if tp.is_file():
                anchor = capsule.load_public_key(tp)
            elif len(trust) == 64 and all(c in "0123456789abcdefABCDEF" for c in trust):
                anchor = trust.lower()
            else:
                raise capsule.UsageError(f"--trust {trust!r} is neither a key file nor a keyset hash")
        if expect_root is not None and not (len(expect_root) == 64
                                            and all(c in "0123456789abcdefABCDEF" for c in expect_root)):
            raise capsule.UsageError(f"--expect-root {expect_root!r} is not a Merkle root (64 hex digits)")
        kw: dict[str, Any] = {"deep": not quick, "trust": anchor, "strict": strict,
                              "parent": parent[0] if parent and len(parent) == 1 else None,
                              "min_seq": min_seq, "expect_root": expect_root, "policy": policy}
        if parent and len(parent) == 2:
            del kw["parent"]
            return capsule.verify_merge(path, list(parent), **kw)
        if not show:
            return capsule.verify(path, **kw)
        # a progress bar (rich) only for a big file on a terminal
        from rich.progress import BarColumn, Progress, TransferSpeedColumn

        with Progress("verifying", BarColumn(), TransferSpeedColumn(), console=err, transient=True) as bar:
            task = bar.add_task("verify", total=size)
            return capsule.verify(path, progress=lambda done, _t: bar.update(task, completed=done), **kw)

    rep = call(go)
    if json_out:
        emit_json(rep.to_dict())
    elif rep.ok:
        extra = ""
        if rep.checkpoints:
            extra = f", {rep.checkpoints} checkpoints" + (" (signatures anchored)" if rep.anchored else "")
        if rep.signed_prefix:
            sp = rep.signed_prefix
            extra += f"; signed through seq {sp['seq']} ({sp['label']!r}, {sp['bytes']} bytes)"
        if rep.lineage:
            lin = rep.lineage  # 15.1: a compaction names its policy and counts, a fork nothing more
            if lin.get("merge"):
                extra += f", merge of {lin['parent']} and {lin['merge']['parent']}"
            else:
                what = (f"compaction ({lin['policy']}: {lin['kept']} kept, {lin['dropped']} dropped)"
                        if lin.get("policy") else "fork")
                extra += f", {what} of {lin['parent']} at seq {lin['tree_size']}"
        out.print(f"ok: {rep.commits} commits, {rep.records} records, {rep.frames} frames, {rep.bytes} bytes{extra}")
        for w in rep.warnings:
            warn(w)
    else:
        if rep.policy:
            emit_json(rep.policy)  # 7.3.1: each violation, as a JSON list
        e = rep.first_error or {}
        where = ", ".join(f"{k} {e[k]}" for k in ("offset", "seq") if e.get(k) is not None)
        err.print(f"capsule: verify failed: {e.get('check')}{' at ' + where if where else ''} in {path}: "
                  f"{e.get('message')}",
                  markup=False)
    if not rep.ok:
        raise typer.Exit(EXIT_DATA)
