"""Run commands: the durable task queue and the idempotent-action journal."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

import capsule
from capsule.ingest.jsonl import loads

from ._errors import EXIT_USAGE, call, fail
from ._params import AtOpt, FileArg, JsonOpt, WaitOpt, time_opt
from ._render import Table, cell, emit_json, out, warn

#: ``--status`` values: a task status (7.9), or ``open`` for pending and claimed
TASK_STATUSES = ("pending", "claimed", "done", "failed", "cancelled", "open")
TABLE_ROWS = 100  # rows the table shows without --limit; JSON lists every task unless --limit


def tasks(path: FileArg, json_out: JsonOpt = False, at: AtOpt = None,
          now: Annotated[str | None, typer.Option("--now", metavar="WHEN", show_default=False, help=(
              "Judge what is due at this time: an ISO-8601 time, '2h ago', or 'last' (the last commit's "
              "time: the capsule's own clock, for an agent on a simulated one). Default: the clock; with "
              "--at, that commit's time."))] = None,
          status: Annotated[list[str] | None, typer.Option("--status", metavar="STATUS", show_default=False, help=(
              "Only tasks in this status (repeatable): pending, claimed, done, failed, cancelled, or open "
              "(pending and claimed). The counts stay the whole queue's."))] = None,
          limit: Annotated[int | None, typer.Option("--limit", "-n", metavar="N", min=1, show_default=False, help=(
              f"List at most N tasks (by id). Default: the table shows {TABLE_ROWS} and says how many it left "
              "out; --json lists every task."))] = None) -> None:
    """Show the durable task queue: status, attempts, leases, what is due and blocked.

    Examples:
      capsule tasks agent.capsule --json
      capsule tasks agent.capsule --status open   # what is still to run
      capsule tasks agent.capsule --now last   # as the agent's own (simulated) clock sees it
    """
    if now is not None and at is not None:
        fail("--at judges the view at its commit's time; --now judges the live queue: give one of them", EXIT_USAGE)
    wanted: set[str] = set()
    for s in status or ():
        for one in s.split(","):
            if one.strip().lower() not in TASK_STATUSES:
                fail(f"--status {one.strip()!r}: expected one of {', '.join(TASK_STATUSES)}", EXIT_USAGE)
            wanted.add(one.strip().lower())
    if "open" in wanted:
        wanted |= {"pending", "claimed"}
    when = None if now in (None, "last") else call(lambda: time_opt(now, "--now"))

    def go() -> tuple[dict[str, Any], int]:
        with capsule.open(path, at=at) as cap:
            c = cap._snap.commit
            # a view at an earlier commit is judged at that commit's time; the live
            # capsule at the current time (SOURCE_DATE_EPOCH in reproducible mode)
            if at is not None or now == "last":
                t = c.time if c else 0
            elif when is not None:
                t = when
            else:
                from capsule.core.clock import default_clock

                t = default_clock()()
            return cap.tasks.to_dict(now=t, statuses=wanted or None, limit=limit or (None if json_out else TABLE_ROWS)), t

    q, asked = call(go)
    if q["time"] > asked + 10**9:  # 7.9: the queue's clock never runs back; one event stamped ahead moves it
        warn(f"the queue's clock is {_span(q['time'] - asked)} ahead of {'--now' if when is not None else 'now'} (an event "
             "was stamped then): leases, backoffs and not-before times are judged from that time until the clock "
             "catches up (spec 7.9)")
    shown = q["tasks"]  # the tasks of --status, up to --limit (q["more"]: how many it left out)
    if json_out:
        emit_json(q)
        return
    t = Table("task", "status", "attempts", "worker", "due")
    due = set(q.get("due") or ())
    for st in shown:
        name = st["id"]
        mark = "yes" if name in due else ("blocked" if st.get("blocked_by") else "")
        t.add_row(*(cell(x) for x in (name, st.get("status"), st.get("attempts", 0), st.get("worker") or "", mark)))
    if shown:
        out.print(t)
    counts = ", ".join(f"{n} {k}" for k, n in q["counts"].items() if n)
    more = q.get("more", 0)
    out.print(f"{sum(q['counts'].values())} tasks ({counts or 'none'}); {len(due)} due now"
              + (f"; {more} more not shown (--limit N{'' if wanted else ', --status open'}, --json)" if more else ""),
              markup=False, highlight=False)


def actions(
    path: FileArg,
    json_out: JsonOpt = False,
    in_doubt: Annotated[bool, typer.Option("--in-doubt", help="Only actions whose outcome is unknown.")] = False,
    resolve: Annotated[str | None, typer.Option("--resolve", help="Settle this in-doubt action key.")] = None,
    done: Annotated[bool | None, typer.Option("--done/--not-done", help="With --resolve: the effect happened, "
                                              "or it did not (the next run_once runs it).")] = None,
    value: Annotated[str | None, typer.Option("--value", help="With --resolve --done: the result, as JSON.")]
    = None,
    wait: WaitOpt = 0.0,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, metavar="N", show_default=False, help=(
        "Only the N actions started last (listed by start time, oldest first; without it, every key in "
        f"key order: the table shows the first {TABLE_ROWS} and says how many it left out)."))] = None,
) -> None:
    """List the idempotent-action journal: keys, status, times, results; settle in-doubt ones.

    Example: capsule actions agent.capsule --resolve email:42 --done --value '{"id": "m-1"}'
    """
    if resolve is None and (done is not None or value is not None):
        fail("--done/--not-done and --value go with --resolve", EXIT_USAGE)
    if resolve is not None and done is None:
        fail("--resolve needs --done or --not-done", EXIT_USAGE)
    if value is not None and not done:
        fail("--value goes with --done", EXIT_USAGE)
    if resolve is not None and in_doubt:
        fail("--in-doubt lists; --resolve settles: give one of them", EXIT_USAGE)
    if resolve is not None and not resolve.strip():
        fail("--resolve needs a non-empty action key", EXIT_USAGE)

    def go() -> list[dict[str, Any]]:
        if resolve is not None:
            v = loads(value, "--value: ") if value is not None else None
            with capsule.open(path, "a", timeout=wait or None) as cap:
                return [cap.resolve_action(resolve, done=bool(done), value=v).to_dict()]
        with capsule.open(path) as cap:  # --in-doubt reads the journal's doubt lists, not every key
            states = cap.actions(in_doubt=in_doubt)
            if limit is not None:  # a key never started sorts first
                states = sorted(states, key=lambda a: (-1 if a.started is None else a.started, a.key))[-limit:]
            return [a.to_dict() for a in states]

    rows = call(go)
    if json_out:
        emit_json(rows)
        return
    t = Table("key", "status", "attempt", "started", "finished", "result")
    shown = rows if limit is not None or resolve is not None else rows[:TABLE_ROWS]  # 20k rows drew for 8 s
    for r in shown:
        res = r["error"] if r["status"] == "failed" else json.dumps(r["value"], ensure_ascii=False)
        t.add_row(*(cell(x) for x in (r["key"][:200], r["status"], r["attempt"], r["started"] or "",
                                      r["finished"] or "", res[:60])))
    out.print(t)
    if len(shown) < len(rows):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        out.print(f"{len(rows)} actions ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
                  f"{len(rows) - len(shown)} more not shown (--limit N for the newest"
                  f"{'' if in_doubt else ', --in-doubt'}, --json)",
                  markup=False, highlight=False)


def _span(ns: int) -> str:
    """A positive duration, roughly: '364 days', '3 h', '42 s'."""
    s = ns // 10**9
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"
