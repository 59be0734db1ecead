"""``capsule verify``: the byte-level verifier (spec 13.3), with trust anchors, pins, parents
(a fork, a compacted file, the two parents of a merge) and the key of an encrypted file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import capsule
from capsule.ingest.source import check_regular

from ._errors import EXIT_DATA, call
from ._keys import trust_key
from ._params import FileArg, JsonOpt
from ._render import emit_json, err, isatty, out, warn


def verify(
    path: FileArg,
    json_out: JsonOpt = False,
    trust: Annotated[str | None, typer.Option("--trust", help="Trust anchor for checkpoint signatures: a KEY.pub "
                                              "file or a keyset hash (64 hex digits).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on every warning: a torn tail, signatures not "
                                         "anchored, no signed checkpoint, records past the signed prefix, an "
                                         "encrypted file without its key. Passes only with --trust.")] = False,
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
                anchor = trust_key(tp)
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
        if policy and rep.policy == []:  # 7.3.1: say that it was checked, not only that nothing failed
            out.print("policy: no violation (each action intent judged against the rules in force when it was written)")
        for r in rep.recoveries:  # 8.3: not a failure, but bytes some commit lost
            out.print(f"recovery at offset {r['offset']} (seq {r['seq']}): a writer dropped a torn tail of "
                      f"{r['bytes']} bytes there")
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
