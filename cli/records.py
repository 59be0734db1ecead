"""Record commands: show one record by id (or id prefix), list records by filter.

Also the one table of search hits (``hit_table``) that ``list`` and ``search``
print: where each hit came from and one line of its text, cut to the terminal
and never wrapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._errors import call
from ._params import (
    META_RULE,
    AtOpt,
    FileArg,
    JsonOpt,
    ValidAtOpt,
    parse_meta,
    time_opt,
    valid_at_iso,
)
from ._render import cell, emit_json, json_text, out, safe

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from capsule import Hit

IdArg = Annotated[str, typer.Argument(help="A record id, or any unique prefix of it (at least 4 hex digits).",
                                      show_default=False, metavar="ID")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Only records with this tag (repeatable: all of "
                                                  "them).")]
AnyTagOpt = Annotated[list[str] | None, typer.Option("--any-tag", help="Only records with at least one of these "
                                                     "tags (repeatable).")]
TierOpt = Annotated[list[str] | None, typer.Option("--tier", help="scratch, working or validated (repeatable).")]
KindOpt = Annotated[list[str] | None, typer.Option("--kind", help="memory, note or decision, the kinds search "
                                                   "covers (repeatable).")]
SinceOpt = Annotated[str | None, typer.Option("--since", metavar="TIME", help="Only records at or after this "
                                              "ISO-8601 time (or int ns).")]
UntilOpt = Annotated[str | None, typer.Option("--until", metavar="TIME", help="Only records at or before this "
                                              "ISO-8601 time (or int ns).")]
MetaOpt = Annotated[list[str] | None, typer.Option("--meta", help=f"KEY=VALUE: only records whose meta has KEY "
                                                   f"equal to VALUE (repeatable). {META_RULE}")]

_LONG = ("text", "summary", "rationale")  # shown last, whole, one line per line


def get(path: FileArg, record_id: IdArg, json_out: JsonOpt = False, at: AtOpt = None) -> None:
    """Show one record of any kind: every field, the whole text.

    Ids are accepted whole or as any unique prefix of at least 4 hex digits, as
    `put`, `list` and `search` print them. A record that is no longer live says so;
    --json prints the fields as stored (times in integer nanoseconds) and "live"
    (unless the record has a field of that name).

    Example: capsule get agent.capsule 3f9a1c
    """
    import capsule

    def go() -> tuple[dict[str, Any], bool]:
        with capsule.open(path, at=at) as cap:
            rec = cap.get(record_id)
            d: dict[str, Any] = {"id": rec.id, "kind": rec.kind, **rec.to_dict()}
            return d, cap.is_live(rec.id)

    d, live = call(go)
    if json_out:
        emit_json(d if "live" in d else {**d, "live": live})  # an application record's own field stays
        return
    from capsule.core.clock import iso

    if not live:
        out.print("status     not live: forgotten, superseded, promoted or demoted, redacted or rolled back "
                  "(history keeps it; "
                  "`capsule why` says by what)" if d["kind"] != "revert" else "status     an event (never live)",
                  markup=False)
    for k in ("id", "kind", "time", *sorted(set(d) - {"id", "kind", "time", *_LONG})):
        v = d.get(k)
        if v is None or v == [] or v == {}:
            continue
        if k in ("time", "valid_from", "valid_to") and isinstance(v, int):  # 7.1: times
            v = iso(v)
        elif k == "embedding" and isinstance(v, list):
            v = f"{len(v)} dimensions"
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            v = ", ".join(v)
        elif not isinstance(v, str):
            v = json_text(v, compact=True)
        out.print(f"{k:<10} {v}")
    for k in _LONG:
        if isinstance(d.get(k), str) and d[k]:
            out.print(f"{k}:")
            for line in d[k].splitlines() or [""]:
                out.print(f"  {line}")


def list_(
    path: FileArg,
    tag: TagOpt = None,
    any_tag: AnyTagOpt = None,
    kind: KindOpt = None,
    tier: TierOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    meta: MetaOpt = None,
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, max=10000, help="How many records.")] = 20,
    json_out: JsonOpt = False,
    at: AtOpt = None,
    valid_at: ValidAtOpt = None,
) -> None:
    """List records newest first, by tag, kind, tier, time or meta (also: capsule records).

    Live records only: rolled-back and expired ones are left out, as in search.
    With --valid-at, the memories true at that time instead (a superseded one too,
    while it was true; expiry judged then); other kinds as without it.
    --json prints the search result shape, with score 0; a decision adds its own
    fields (evidence, rationale, inputs, alternatives), as get --json shows them. (`records` is the same
    command; other kinds: `capsule state`, `capsule tasks`, `capsule actions`.)

    Examples:
      capsule list agent.capsule --tag ops --since 2026-01-01 --limit 5
      capsule records agent.capsule --kind decision --json
      capsule records agent.capsule --kind memory --valid-at 2025-06-01
    """
    import capsule

    meta_map = parse_meta(meta or [])
    when = call(lambda: valid_at_iso(valid_at))

    def go() -> list[Hit]:
        with capsule.open(path, at=at) as cap:
            hits = cap.search(None, k=limit, tags=tag, any_tags=any_tag, tier=tier, kind=kind, since=time_opt(since, "--since"),
                              until=time_opt(until, "--until"), meta=meta_map, valid_at=when)
            for h in hits:
                h.record  # noqa: B018  (read while the capsule is open)
            return hits

    hits = call(go)
    if json_out:  # 13.6: each record says the valid time it was listed at
        emit_json([_row(h) if when is None else {**_row(h), "valid_at": when} for h in hits])
    elif not hits:
        out.print("no records")
    else:
        out.print(hit_table(hits, None))


def _row(h: Hit) -> dict[str, Any]:
    """The search result shape (16.7); a kind other than memory adds its own fields (a decision's
    evidence: what a reader of `list --kind decision --json` looks for)."""
    d = h.to_dict()
    if h.kind != "memory":
        d.update({k: v for k, v in h.record.to_dict().items() if k not in d and k != "embedding"})
    return d


def origin(h: Hit) -> str:
    """Where a hit came from: its file (``meta.root/meta.path``, with the chunk), else its
    ``source``, else ``meta.source``, else its kind when not a memory."""
    meta = h.meta
    path, root = meta.get("path"), meta.get("root")
    if isinstance(path, str) and path:
        path = f"{root}/{path}" if isinstance(root, str) and root else path
        chunk = meta.get("chunk")
        return f"{path}#{chunk}" if isinstance(chunk, int) and chunk else path
    src = getattr(h.record, "source", None) or meta.get("source")
    if isinstance(src, str) and src:
        return src
    return "" if h.kind == "memory" else h.kind


def marked(text: str, query: str | None, width: int, minor: int | None = None) -> Text:
    """One line of ``text`` of at most ``width`` characters around the first query
    term, the terms in bold (literal and escaped), matched by the tokenizer of a file
    of header ``minor`` (12.8; None: either)."""
    from rich.text import Text

    from capsule.search.lexical import rule_of, snippet

    tok = None if minor is None else rule_of(minor).tok
    line, spans = snippet(text, query or "", width=max(1, width - 2), lead=min(24, width // 4), tok=tok)  # 2: "…"s
    t = Text(no_wrap=True, overflow="ellipsis")
    at = 0
    for a, b in spans:
        t.append(safe(line[at:a]))
        t.append(safe(line[a:b]), style="bold")
        at = b
    t.append(safe(line[at:]))
    return t


def hit_table(hits: list[Hit], query: str | None, minor: int | None = None) -> Table:
    """Search results (with ``query``: rank and score) or a listing (time instead), one
    line each: id prefix, where it came from, tags (if any hit has some) and a snippet
    in the width left, so a row never wraps."""
    from rich.table import Table

    ranked = query is not None
    heads = ["#", "score", "id"] if ranked else ["id", "time"]
    leads = [[str(i), f"{h.score:.4f}", h.id[:8]] if ranked else [h.id[:8], h.to_dict()["time"][:16].replace("T", " ")]
             for i, h in enumerate(hits, 1)]
    froms = [safe(origin(h)) for h in hits]
    tags = [safe(",".join(h.tags)) for h in hits]
    widths = [max(len(head), *(len(row[j]) for row in leads)) for j, head in enumerate(heads)]
    widths.append(min(max(24, out.width // 4), max(4, *map(len, froms))))
    has_tags = any(tags)
    if has_tags:
        widths.append(min(max(16, out.width // 8), max(4, *map(len, tags))))
    room = max(16, out.width - sum(widths) - 2 * len(widths))  # two spaces between columns
    texts = [marked(h.text, query, room, minor) for h in hits]
    t = Table(box=None, pad_edge=False, show_edge=False)
    for head, w in zip([*heads, "from", "tags"], widths, strict=False):
        t.add_column(head, width=w, no_wrap=True, overflow="ellipsis", justify="right" if head in ("#", "score")
                     else "left")
    t.add_column("text", width=min(room, max(4, *(x.cell_len for x in texts))), no_wrap=True, overflow="ellipsis")
    for lead, frm, tag, text in zip(leads, froms, tags, texts, strict=True):
        t.add_row(*map(cell, lead), cell(frm), *([cell(tag)] if has_tags else []), text)
    return t
