"""State and trust commands: what the agent believes, signing keys, checkpoints,
rollback and forks (the byte-level verifier that checks all of it is ``verify``)."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated, Any

import typer

import capsule
from capsule.core import constants as C
from capsule.ingest.source import check_regular, read_regular

from ._errors import EXIT_USAGE, SigningKeyError, call, fail
from ._keys import env_bytes
from ._params import (
    AtOpt,
    FileArg,
    JsonOpt,
    NewestOpt,
    ValidAtOpt,
    WaitOpt,
    expired_at,
    valid_at_iso,
)
from ._render import Table, cell, emit_json, escape_json, out, rule_text, write_all

PassOpt = Annotated[str | None, typer.Option("--passphrase-env", help="Environment variable holding the key's "
                                             "passphrase.")]


def _passphrase(env: str | None) -> bytes | None:
    if env is None:
        return None
    v = env_bytes(env)
    if not v:
        raise capsule.UsageError(f"environment variable {env} is not set or empty")
    return v


def _load_keys(paths: list[Path], passphrase_env: str | None, opt: str = "--key") -> list[capsule.PrivateKey]:
    for p in paths:
        check_regular(p, f"{opt} ")
    pw = _passphrase(passphrase_env)
    return [_signing_key(p, pw, opt) for p in paths]


def _signing_key(p: Path, pw: bytes | None, opt: str = "--key") -> capsule.PrivateKey:
    """A --key file, with --passphrase-env's passphrase when given (a plain key then says it has
    none: the option is the key's, not the capsule's); without the option a sealed key takes
    $CAPSULE_KEY_PASSPHRASE, as -i does."""
    from capsule.format.keys import KeyFileError, PassphraseRequired

    try:
        return capsule.load_private_key(p, pw) if pw is not None else capsule.load_private_key(p)
    except KeyFileError as e:  # a .pub file, another format: the wrong file named, as -i says (exit 2)
        raise capsule.UsageError(f"{opt} {p}: {e}") from None
    except PassphraseRequired:
        env = env_bytes("CAPSULE_KEY_PASSPHRASE")
        if not env:
            raise SigningKeyError(f"{opt} {p}: the key file is sealed: give its passphrase with "
                                  "--passphrase-env VAR (or in $CAPSULE_KEY_PASSPHRASE)") from None
        return capsule.load_private_key(p, env)


def state(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None, valid_at: ValidAtOpt = None) -> None:
    """Show what the agent believes: memories by tier, decisions, constraints, identity.

    Active constraints come with their approvals; --json is canonical (sorted keys, stable).
    --valid-at keeps the memories true at that world time (the document says which).

    Examples:
      capsule state agent.capsule --at 2026-01-05T00:00:00Z --json
      capsule state agent.capsule --valid-at 2025-06-01 --json
    """
    # The fold builds some 10 acyclic containers per memory; the cyclic collector would walk
    # them all again and again as they pile up (a tenth of `state --json` at 100k memories).
    # Paused for the command alone, and resumed only once _show has dropped them: the runner
    # of the tests calls commands in its own process.
    was = gc.isenabled()
    gc.disable()
    try:
        _show(path, json_out, at, valid_at)
    finally:
        if was:
            gc.enable()


def _show(path: Path, json_out: bool, at: str | None, valid_at: str | None) -> None:
    when = call(lambda: valid_at_iso(valid_at))

    def go() -> Any:
        with capsule.open(path, at=at) as cap:
            # 7.1: expiry judged as list and search judge it (a view: at its commit's time)
            now = when or (cap.summary().last_commit_time if at else cap.clock())  # --valid-at: judged then
            return cap.state(valid_at=when), now

    state, now = call(go)
    if json_out:  # the library's canonical document (13.2): sorted keys, compact, bin values as hex
        write_all(escape_json(call(state.to_json_bytes)))  # C1 and bidi escaped
        write_all(b"\n")  # apart: `doc + b"\n"` would copy tens of MB
        return
    st = state.to_dict()
    out.print(f"state root  {st['state_root']}  ({st['records']} records)", markup=False)
    if "valid_at" in st:
        out.print(f"valid at    {st['valid_at']}", markup=False)
    ident = st["identity"]
    if ident:
        out.print(f"identity    {ident['agent_id']} {ident['name']} {ident['model']}".rstrip(), markup=False)
    expired = expired_at(now)
    for tier, mems in st["memories"].items():
        gone = {m["id"] for m in mems if expired(m)}
        said = f" ({len(gone)} expired: live, but left out of list and search)" if gone else ""
        out.print(f"{tier:<11} {len(mems)} memories{said}", markup=False)
        for m in mems[-5:]:
            mark = " [expired]" if m["id"] in gone else ""
            out.print(f"  {m['id'][:12]}  {m.get('text', '[redacted]')[:100]}{mark}", markup=False)
        if len(mems) > 5:
            out.print(f"  ... {len(mems) - 5} older (all of them: --json, or capsule list --tier {tier})",
                      markup=False)
    out.print(f"constraints {len(st['constraints'])} active", markup=False)
    for c in st["constraints"]:
        ok = sum(a["verified"] for a in c["approvals"])
        # the approvals of the constraint record itself; a rule's are of action keys (`capsule audit KEY`)
        mine = f"  ({ok} verified approvals)" if ok or not c.get("rule") else ""
        out.print(f"  [{c['scope']}] {c['text'][:100]}{rule_text(c)}{mine}", markup=False)
    out.print(f"decisions   {len(st['decisions'])}", markup=False)
    for d in st["decisions"][-5:]:
        out.print(f"  {d['id'][:12]}  {d.get('summary', '[redacted]')[:100]}", markup=False)
    if len(st["decisions"]) > 5:
        out.print(f"  ... {len(st['decisions']) - 5} older (all of them: --json, or capsule list --kind decision)",
                  markup=False)


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
        for p in (out_path, Path(f"{out_path}.pub")):  # as save_private_key checks, in the CLI's words
            if os.path.lexists(p):
                raise capsule.AlreadyExists(f"{p}: already exists; remove it first or choose another -o path")
        pub = capsule.save_private_key(out_path, key, passphrase=pw)
        return {"key": str(out_path), "public_key": str(pub), "key_id": key.key_id, "encrypted": pw is not None}

    info = call(go)
    if json_out:
        emit_json(info)
    else:
        out.print(f"wrote {info['key']} (key id {info['key_id']}) and {info['public_key']}", markup=False)


def checkpoint(
    path: FileArg,
    label_arg: Annotated[str | None, typer.Argument(metavar="LABEL", show_default=False,
                                                    help="The label, as --label gives it.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="A name for this checkpoint (used by --at and "
                                                               "rollback).")] = None,
    key: Annotated[list[Path] | None, typer.Option("--key", help="Private key file; repeat for a threshold of "
                                                                  "keys.")] = None,
    runtime: Annotated[Path | None, typer.Option("--runtime", help="A file of runtime state to store with it.")]
    = None,
    passphrase_env: PassOpt = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Sign and commit a checkpoint of the current state.

    Example: capsule checkpoint agent.capsule day-1 --key agent.key   (or --label day-1)
    """

    if label is not None and label_arg is not None and label != label_arg:
        fail(f"two labels: {label_arg!r} and --label {label!r}", EXIT_USAGE)
    label = label if label is not None else label_arg
    if label is None:
        fail("a checkpoint needs a label: capsule checkpoint FILE LABEL --key KEY (or --label LABEL)", EXIT_USAGE)
    if not key:
        fail("a checkpoint is signed: give --key KEY (repeat it for a threshold of keys)", EXIT_USAGE)

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


def checkpoints(path: FileArg, json_out: JsonOpt = False, limit: NewestOpt = None) -> None:
    """List signed checkpoints: label, seq, state root, signer key ids, time.

    A fork or a compacted file also lists the parent's checkpoints it carries ("signed by"
    the parent): their labels still work with --at and rollback --to.

    Example: capsule checkpoints agent.capsule --json
    """

    def go() -> list[dict[str, Any]]:
        with capsule.open(path) as cap:
            carried = [c.to_dict() for c in cap.carried_checkpoints()]  # a few, in the LINEAGE
            rows = carried + [{**c.to_dict(), "carried": False} for c in cap.checkpoints(limit)]
            return rows[-limit:] if limit else rows

    rows = call(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("label", "seq", "time", "state root", "signers", "signed in")
    for r in rows:
        t.add_row(*(cell(x) for x in (r["label"], r["seq"], r["time"], r["state_root"][:16], ", ".join(r["signers"]),
                                      f"parent {r['origin'][:16]}" if r["carried"] else "this file")))
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
            signed = len(cap.checkpoints())
            rid = cap.rollback(to, key=keys or None)
            signed = len(cap.checkpoints()) > signed
            ck = cap.find_checkpoint(to) or next((c for c in reversed(cap.carried_checkpoints()) if c.label == to), None)
            # 7.7.1: a record redacted since the checkpoint is not restored, so the roots may differ
            return {"revert": rid, "state_root": cap.state_root, "changed": rid is not None, "signed": signed,
                    "matches_checkpoint": ck is not None and ck.state_root == cap.state_root}

    info = call(go)
    if json_out:
        emit_json(info)
    elif info["changed"]:
        out.print(f"rolled back to {to!r}: state root {info['state_root']}"
                  + ("" if info["matches_checkpoint"] else " (records redacted since stay gone)"), markup=False)
    elif info["signed"]:  # a rollback killed before its checkpoint: the rerun signed it
        out.print(f"already at {to!r} (state root {info['state_root']}): signed the checkpoint "
                  f"{'rollback-to-' + to!r} it lacked", markup=False)
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

