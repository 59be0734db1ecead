"""Lifecycle commands (spec 7.7.1): forget, redact, supersede, promote, demote.

Each opens the capsule for writing, adds one lifecycle event (and, for supersede, promote
and demote, the replacement memory) in one commit through the ``Transaction`` verb of the
same name, and prints the ids. Errors are one line; a refused event writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ._errors import EXIT_USAGE, call, fail
from ._params import META_RULE, FileArg, JsonOpt, WaitOpt, parse_meta, time_opt
from ._render import emit_json, out, warn

IdArg = Annotated[str, typer.Argument(help="The record's id, or any unique prefix of it (at least 4 hex digits).",
                                      show_default=False, metavar="ID")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the event).")]
ActorOpt = Annotated[str, typer.Option("--actor", help="Who asked for it (kept in the event).")]
EvidenceOpt = Annotated[list[str] | None, typer.Option("--evidence", metavar="ID", help="A record id (or unique "
                                                       "prefix) that supports the change (repeatable).")]
TierArg = Annotated[str, typer.Option("--tier", help="scratch, working or validated.", show_default=False)]


def _run(path: Any, wait: float, verb: Callable[[Any], str], json_out: bool, *, replaces: bool = True
         ) -> dict[str, Any]:
    """One commit holding one lifecycle event; print the event id and (``replaces``) the new memory's id."""
    import capsule

    if path.is_dir():
        fail(f"{path}: is a directory, not a capsule", EXIT_USAGE)
    if not path.is_file():
        fail(f"{path}: no such capsule (create it with `capsule init`)", EXIT_USAGE)

    def go() -> dict[str, Any]:
        with capsule.open(path, "a", timeout=wait or None) as cap:
            with cap.commit() as tx:
                got = verb(tx)
            new = got if replaces else None
            event = tx.last_event
            assert event is not None
            ev = cap.get(event)  # the event as written: its op (promote or demote) and what it dropped
            return {"op": ev.op, "event": event, "records": [x.hex() for x in ev.drop], "new": new}

    d = call(go)
    if json_out:
        emit_json(d)
        return d
    what = ", ".join(d["records"])
    out.print(f"{d['op']} {what}" + (f" -> {d['new']}" if d["new"] else "") + f"  (event {d['event']})",
              markup=False)
    return d


def _live_successors(path: Any, ids: list[str]) -> list[tuple[str, str]]:
    """(redacted id, live memory that superseded it): a supersede keeps the old memory's tags,
    meta and source unless it was given new ones, so a leak there may live on."""
    import capsule
    from capsule.questions._lifecycle import dead_ids

    gone = {bytes.fromhex(x) for x in ids}
    with capsule.open(path) as cap:
        dead = dead_ids(cap._store)
        found = []
        for ev in cap.records(kind="revert"):
            if ev.op == "supersede" and gone.intersection(ev.drop):
                found += [(x.hex(), b.hex()) for x in ev.drop if x in gone for b in ev.by if b not in dead]
        return found


def forget(path: FileArg, record_id: IdArg, reason: ReasonOpt = "", actor: ActorOpt = "", wait: WaitOpt = 0.0,
           json_out: JsonOpt = False) -> None:
    """Forget a memory, note, decision or application record: it leaves the live state, history keeps it.

    Example: capsule forget agent.capsule 3f9a1c --reason "no longer true"
    """
    _run(path, wait, lambda tx: tx.forget(record_id, reason=reason, actor=actor), json_out, replaces=False)


def redact(path: FileArg, record_id: IdArg, reason: ReasonOpt = "", actor: ActorOpt = "", wait: WaitOpt = 0.0,
           json_out: JsonOpt = False) -> None:
    """Redact a memory, note, decision or application record: forgotten, and its text is never shown again
    (get, list, search, state); the next compaction purges its bytes. Its copies under another tier
    (promoted or demoted) are redacted with it; a live memory that superseded it is named on stderr.

    Example: capsule redact agent.capsule 3f9a1c --reason "held a password" --actor alice
    """
    d = _run(path, wait, lambda tx: tx.redact(record_id, reason=reason, actor=actor), json_out, replaces=False)
    for old, new in call(lambda: _live_successors(path, d["records"])):
        warn(f"{old[:16]} was superseded by {new[:16]}, which is live and kept its tags, meta and source unless "
             "the supersede gave new ones: redact it too if they hold what leaked")


def supersede(
    path: FileArg,
    record_id: IdArg,
    text: Annotated[str, typer.Option("--text", help="The new memory's text.", show_default=False)],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable; default: the old "
                                                  "memory's tags).")] = None,
    tier: Annotated[str | None, typer.Option("--tier", help="scratch, working or validated (default: the old "
                                             "memory's).")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help=f"KEY=VALUE (repeatable; default: the old "
                                                   f"memory's meta). {META_RULE}")] = None,
    evidence: EvidenceOpt = None,
    reason: ReasonOpt = "",
    actor: ActorOpt = "",
    valid_from: Annotated[str | None, typer.Option("--valid-from", metavar="TIME", show_default=False, help=(
        "When the new fact became true in the world (ISO-8601 or int ns): the old one was true until "
        "then (a change). Without it the supersede is a correction (spec 13.6)."))] = None,
    valid_to: Annotated[str | None, typer.Option("--valid-to", metavar="TIME", show_default=False,
                                                 help="When the new fact stops being true.")] = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Replace a live memory by a new one; state shows the new one, history keeps both.

    The new memory keeps the old one's tags, tier, meta and source unless given.
    --valid-from records a change in the world, so `--valid-at` before it still finds the old one.

    Example: capsule supersede agent.capsule 3f9a1c --text "the staging db is db-stg-2" --reason migrated
    """
    meta_map = parse_meta(meta) if meta else None
    def go(tx: Any) -> str:
        from capsule.core.errors import InvalidRecordError, UsageError

        # each time parsed here, so a bad one names its option (ISO-8601 or int ns, as --valid-at)
        when = {k: time_opt(v, f"--{k.replace('_', '-')}") for k, v in (("valid_from", valid_from),
                                                                     ("valid_to", valid_to)) if v is not None}
        try:
            return tx.supersede(record_id, text, tags=tag or None, tier=tier, meta=meta_map, evidence=evidence or (),
                                reason=reason, actor=actor, **when)
        except InvalidRecordError as e:  # the options given (a window from >= to): used wrongly, exit 2
            raise UsageError(str(e)) from None

    _run(path, wait, go, json_out)


def promote(path: FileArg, record_id: IdArg, tier: TierArg, evidence: EvidenceOpt = None, reason: ReasonOpt = "",
            actor: ActorOpt = "", wait: WaitOpt = 0.0, json_out: JsonOpt = False) -> None:
    """Move a live memory to a higher tier (scratch -> working -> validated), with evidence.

    The memory is written again with the new tier (a new id); a lower tier is a demotion.

    Example: capsule promote agent.capsule 3f9a1c --tier validated --evidence 77be01 --reason "CI green"
    """
    _run(path, wait, lambda tx: tx.promote(record_id, tier, evidence=evidence or (), reason=reason, actor=actor),
         json_out)


def demote(path: FileArg, record_id: IdArg, tier: TierArg, evidence: EvidenceOpt = None, reason: ReasonOpt = "",
           actor: ActorOpt = "", wait: WaitOpt = 0.0, json_out: JsonOpt = False) -> None:
    """Move a live memory to a lower tier (validated -> working -> scratch).

    Example: capsule demote agent.capsule 3f9a1c --tier scratch --reason "contradicted by a newer run"
    """
    _run(path, wait, lambda tx: tx.demote(record_id, tier, evidence=evidence or (), reason=reason, actor=actor),
         json_out)
