"""``capsule merge``: two capsules with a common ancestor into a new one (spec 20)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._errors import call
from ._params import FileArg, JsonOpt
from ._render import emit_json, out
from .state import PassOpt, _load_keys

if TYPE_CHECKING:
    from capsule.merging import MergeReport


def merge_cmd(
    a: FileArg,
    b: Annotated[Path, typer.Argument(help="The other capsule: a copy of A that diverged, a fork of A or A's "
                                      "parent, or a fork of A's parent at the same commit.", show_default=False,
                                      metavar="OTHER")],
    out_path: Annotated[Path, typer.Option("-o", "--out", help="Write the merged capsule here (a new file; "
                                           "never one of the parents).", show_default=False)],
    key: Annotated[list[Path] | None, typer.Option("--key", help="Sign a checkpoint labelled `merge` over the "
                                                   "merged head with this private key file; repeat for a "
                                                   "threshold.")] = None,
    passphrase_env: PassOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be merged and what conflicts; "
                                          "write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing -o file (never a parent).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Merge two capsules that share an ancestor into a new file; `verify C --parent A --parent B` proves it.

    Records are united by content id; merge A B and merge B A write the same bytes. What
    both sides changed differently (identity, a constraint, a memory's replacement or tier,
    a task, an action key done twice or in doubt) is settled by spec 20.5 and listed.

    Examples:
      capsule merge laptop.capsule cloud.capsule -o merged.capsule
      capsule merge laptop.capsule cloud.capsule -o merged.capsule --dry-run --json
      capsule verify merged.capsule --parent laptop.capsule --parent cloud.capsule
    """

    def go() -> MergeReport:
        from capsule.merging import merge  # loaded by the command that uses it (start-up, issue 14)

        keys = _load_keys(key, passphrase_env) if key and not dry_run else None
        return merge(a, b, out_path, key=keys, dry_run=dry_run, force=force)

    rep = call(go)
    if json_out:
        emit_json(rep.to_dict())
        return
    verb = "would merge" if rep.dry_run else "merged"
    out.print(f"{verb} {rep.a} and {rep.b} ({rep.relation}, common ancestor at seq {rep.ancestor['tree_size']}) "
              f"into {rep.out}: {rep.records} records ({rep.only_a} only in A, {rep.only_b} only in B, "
              f"{rep.shared} in both, {rep.dropped} redacted not copied), {len(rep.conflicts)} conflicts"
              + ("" if rep.dry_run else f"; {rep.bytes} bytes"), markup=False)
    for c in rep.conflicts:
        out.print(f"  conflict {c.kind} {c.subject}: {c.resolution}" + _winner(c.winner), markup=False)


def _winner(w: Any) -> str:
    return "" if w is None else f" (follows {w.upper()})"


__all__ = ["merge_cmd"]
