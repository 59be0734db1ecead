"""Question commands (spec 13.5): beliefs, diff, timeline (why and audit: ``lineage``).

Each opens the capsule read-only, asks one library question and prints a table, or
with ``--json`` the question's ``to_dict()`` document. Nothing here is imported by
``capsule --version``: the library's questions load inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import call
from ._params import AtOpt, FileArg, JsonOpt, expired_at, regular, time_opt
from ._render import Table, cell, emit_json, out, rule_text

LimitOpt = Annotated[int, typer.Option("--limit", min=0, help="Show at most this many items per group.")]
TrustOpt = Annotated[str | None, typer.Option("--trust", help="Trust anchor (a KEY.pub file or a keyset hash): "
                                              "also say whether the covering checkpoint's signer is anchored.")]


def _trust(trust: str | None) -> Any:
    if trust is None:
        return None
    import capsule
    from capsule.ingest.source import check_regular

    tp = Path(trust)
    if len(trust) == 64 and all(c in "0123456789abcdefABCDEF" for c in trust) and not tp.exists():
        return trust.lower()
    check_regular(tp, "--trust ")
    if tp.is_file():
        return capsule.load_public_key(tp)
    raise capsule.UsageError(f"--trust {trust!r} is neither a key file nor a keyset hash")


def _regular_or_none(value: Path | None) -> Path | None:
    return None if value is None else regular(value)


def _time(text: str | None, name: str) -> int | None:
    return time_opt(text, name)


def _ck(c: dict[str, Any] | None) -> str:
    if c is None:
        return "none yet"
    ok = "signature ok" if c["signature_ok"] else "SIGNATURE BAD"
    anch = "" if c["anchored"] is None else (", anchored" if c["anchored"] else ", NOT anchored")
    return f"{c['label']!r} (seq {c['seq']}) by {', '.join(c['signers'])}: {ok}{anch}"


def beliefs(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None, limit: LimitOpt = 10) -> None:
    """What the agent holds: memories by tier (newest first), decisions, constraints, identity,
    open tasks, in-doubt actions.

    Example: capsule beliefs agent.capsule --limit 5
    """
    import capsule

    def go() -> tuple[dict[str, Any], Any]:
        with capsule.open(path, at=at) as cap:  # 7.1: expiry as list and search judge it
            return cap.beliefs(limit=limit).to_dict(), (cap.summary().last_commit_time if at else cap.clock())

    d, now = call(go)
    if json_out:
        emit_json(d)
        return
    expired = expired_at(now)

    def shown(m: dict[str, Any]) -> str:
        return m.get("text", "[redacted]") + (" [expired]" if expired(m) else "")

    t = Table("group", "count", "newest")
    for tier, g in d["memories"].items():
        t.add_row(cell(f"memories: {tier}"), cell(g["count"]), cell("; ".join(shown(m) for m in g["newest"])))
    t.add_row(cell("decisions"), cell(d["decisions"]["count"]),
              cell("; ".join(x.get("summary", "[redacted]") for x in d["decisions"]["newest"])))
    t.add_row(cell("constraints"), cell(len(d["constraints"])),
              cell("; ".join(f"[{c['scope']}] {c['text']}{rule_text(c)}" for c in d["constraints"][:limit])))
    ident = d["identity"]
    t.add_row(cell("identity"), cell(1 if ident else 0), cell(ident["agent_id"] if ident else ""))
    t.add_row(cell("open tasks"), cell(len(d["tasks_open"])),
              cell("; ".join(f"{x['id']} ({x['status']})" for x in d["tasks_open"][:limit])))
    t.add_row(cell("in-doubt actions"), cell(len(d["actions_in_doubt"])),
              cell("; ".join(x["key"] for x in d["actions_in_doubt"][:limit])))
    out.print(t)
    out.print(f"{d['records']} live records, state root {d['state_root']}")


def diff(path: FileArg,
         other: Annotated[Path | None, typer.Argument(metavar="OTHER", show_default=False, callback=_regular_or_none,
                                                      help="A second capsule sharing FILE's lineage (a fork of it, "
                                                           "its parent, or a copy): diff FILE -> OTHER.")] = None,
         from_: Annotated[str | None, typer.Option("--from", help="Start: a label, seq, commit-root prefix, time or "
                                                   "time ago ('yesterday', '6h ago'; one-file form).")] = None,
         to: Annotated[str | None, typer.Option("--to", help="End: a label, seq, commit-root prefix or time "
                                                "(one-file form; default: the newest commit).")] = None,
         json_out: JsonOpt = False, limit: LimitOpt = 20) -> None:
    """What changed: records added and removed (rolled back, expired, ...), tier, constraint and
    identity changes, checkpoints signed, actions run, tasks finished.

    One file between two points: capsule diff FILE --from X --to Y (without --to: up to the newest commit).

    Two files sharing lineage (a fork and its parent, or two copies that diverged): capsule diff A B, from A's newest commit to B's, with B's events since their common ancestor (named in --json under "lineage"); files that share no lineage are refused.

    Example: capsule diff agent.capsule --from day-1 --to day-2

    Example: capsule diff agent.capsule --from yesterday

    Example: capsule diff agent.capsule experiment.capsule
    """
    import capsule

    def go() -> dict[str, Any]:
        if other is not None:
            if from_ is not None or to is not None:
                raise capsule.UsageError("diff A B compares two files: --from/--to belong to diff FILE --from X --to Y")
            with capsule.open(path) as a, capsule.open(other) as b:
                return a.diff(b, limit=limit).to_dict()
        if from_ is None:
            raise capsule.UsageError("diff needs --from (one file; --to defaults to the newest commit) or a second "
                                     "capsule (diff A B)")
        with capsule.open(path) as cap:
            return cap.diff(from_, to, limit=limit).to_dict()

    d = call(go)
    if json_out:
        emit_json(d)
        return
    out.print(f"from seq {d['from']['seq']} ({d['from']['time']}) to seq {d['to']['seq']} ({d['to']['time']})")
    if "lineage" in d:
        lin, anc = d["lineage"], d["lineage"]["ancestor"]
        out.print(f"lineage: {lin['relation']}; common ancestor: " + ("none held (forks of one parent)" if anc is None
                  else f"seq {anc['seq']} in {anc['in']} (root {anc['root'][:12]})"))
    t = Table("change", "count", "detail")

    def kinds(m: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in m.items())

    t.add_row(cell("added"), cell(d["added"]["count"]), cell(kinds(d["added"]["by_kind"])))
    t.add_row(cell("removed"), cell(d["removed"]["count"]), cell(kinds(d["removed"]["by_reason"])))
    t.add_row(cell("restored"), cell(d["restored"]["count"]), cell(""))
    if "transient" in d:  # one file: committed and dropped in between (live at neither end)
        t.add_row(cell("transient"), cell(d["transient"]["count"]), cell("added and dropped in between"))
    if d.get("purged", {}).get("count"):  # redacted ids a compaction purged: removed or transient, unknown here
        t.add_row(cell("purged"), cell(d["purged"]["count"]), cell("redacted, bytes purged by a compaction"))
    t.add_row(cell("tier changes"), cell(len(d["tier_changes"])),
              cell("; ".join(f"{c['text']}: {c['from']} -> {c['to']}" for c in d["tier_changes"][:limit])))
    life = d.get("lifecycle", [])  # 7.7.1: forgotten, redacted, superseded old -> new, promoted, demoted
    t.add_row(cell("lifecycle"), cell(d.get("lifecycle_count", len(life))), cell("; ".join(
        f"{e['op']} {', '.join(x[:12] for x in e['records'])}"
        + (f" -> {', '.join(x[:12] for x in e['by'])}" if e["by"] else "") for e in life[:limit])))
    for what in ("added", "revoked"):
        cs = d["constraints"][what]
        t.add_row(cell(f"constraints {what}"), cell(len(cs)),
                  cell("; ".join("[redacted]" if c.get("redacted") else f"[{c['scope']}] {c['text']}"
                                 for c in cs[:limit])))
    ident = d["identity"]  # a rollback may change the identity in force with no identity record in between
    t.add_row(cell("identity"), cell(max(len(ident["changes"]), int(ident["from"] != ident["to"]))),
              cell("unchanged" if ident["from"] == ident["to"] else f"{(ident['from'] or 'none')[:12]} -> "
                   f"{(ident['to'] or 'none')[:12]}"))
    t.add_row(cell("checkpoints signed"), cell(len(d["checkpoints"])),
              cell(", ".join(c["label"] for c in d["checkpoints"][:limit])))
    t.add_row(cell("actions run"), cell(len(d["actions"])),
              cell(", ".join(f"{a['key']} ({'ok' if a['ok'] else 'failed'})" for a in d["actions"][:limit])))
    t.add_row(cell("tasks finished"), cell(len(d["tasks_finished"])),
              cell(", ".join(f"{x['task']} ({x['op']})" for x in d["tasks_finished"][:limit])))
    out.print(t)


def timeline(path: FileArg, json_out: JsonOpt = False,
             since: Annotated[str | None, typer.Option("--since", metavar="TIME", help="Only events at or after "
                                                       "this ISO-8601 time.")] = None,
             until: Annotated[str | None, typer.Option("--until", metavar="TIME", help="Only events at or before "
                                                       "this ISO-8601 time.")] = None,
             kind: Annotated[list[str] | None, typer.Option("--kind", help="commit, checkpoint, action, task or "
                                                            "lifecycle (repeatable).")] = None,
             limit: Annotated[int | None, typer.Option("--limit", min=0, help="Only the newest N events.")] = None,
             at: AtOpt = None) -> None:
    """Commits, checkpoints, actions, task events and lifecycle events in order, one line each.

    Example: capsule timeline agent.capsule --kind action --since 2026-12-01T00:00:00Z
    """
    import capsule

    def go() -> dict[str, Any]:
        s, u = _time(since, "--since"), _time(until, "--until")
        with capsule.open(path, at=at) as cap:
            return cap.timeline(since=s, until=u, kinds=kind, limit=limit).to_dict()

    d = call(go)
    if json_out:
        emit_json(d)
        return
    t = Table("seq", "time", "kind", "summary")
    for e in d["events"]:
        t.add_row(*(cell(x) for x in (e["seq"], e["time"], e["kind"], e["summary"])))
    out.print(t)
    if d["total"] is None:  # the walk back from the last commit stopped at the limit
        out.print(f"(the newest {len(d['events'])} events; older ones not read)")
    elif len(d["events"]) < d["total"]:
        out.print(f"(newest {len(d['events'])} of {d['total']} events)")
