"""Introspection commands on long-lived capsules, as a fresh-context review found them.

- Rich turned emoji shortcodes in user text into emoji: `get` printed the memory
  "acl rw:x:r" as "acl rw❌r", `audit` the action key "email:x:42" as "email❌42".
- `diff --from A --to B` after a compaction counted a record added and redacted between A and B
  as *removed*, kind "?": the compaction purged its bytes, so the file cannot say whether it was
  live at A. Such ids are now counted apart, as *purged* (13.5).
- `get PREFIX` (and `why PREFIX`) of a redacted record whose bytes a compaction purged said "no
  record", while the whole id named the redaction.
- `actions` and `checkpoints` had no `--limit`: a long-lived agent's whole journal printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import capsule
import capsule.core.clock

from .clirun import capsule_cli

run = capsule_cli


def test_user_text_with_colons_is_printed_as_stored(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            rid = tx.remember("acl rw:x:r score :100: disc :cd:")
            tx.constrain("never :x: delete", scope="ops:x:y")
        cap.run_once("email:x:42", lambda: 1)
    for args in (("get", f, rid[:8]), ("state", f), ("audit", f, "email:x:42"), ("why", f, rid[:8]),
                 ("list", f), ("beliefs", f)):
        text = run(*args).stdout
        assert "❌" not in text and "💯" not in text and "💿" not in text, (args, text)
    assert "acl rw:x:r score :100: disc :cd:" in run("get", f, rid[:8]).stdout
    assert "email:x:42" in run("audit", f, "email:x:42").stdout
    assert "ops:x:y" in run("state", f).stdout


def _diff(f: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(run("diff", f, "--from", "A", "--to", "B", "--json").stdout)
    return doc


def test_diff_after_compaction_counts_a_purged_redaction_apart(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    key = capsule.generate_key()
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("base fact")
        cap.checkpoint("A", key=key)
        with cap.commit() as tx:
            x = tx.remember("password hunter2")
        with cap.commit() as tx:
            tx.redact(x, reason="secret")
        cap.checkpoint("B", key=key)
    before = _diff(f)
    assert (before["removed"]["count"], before["transient"]["count"], before["purged"]["count"]) == (0, 1, 0)
    with capsule.open(f, "a") as cap:
        cap.compact()
    assert b"hunter2" not in f.read_bytes()
    after = _diff(f)
    assert (after["removed"]["count"], after["transient"]["count"], after["purged"]["count"]) == (0, 0, 1)
    assert after["removed"]["by_kind"] == {} and after["purged"]["first"][0]["id"] == x
    assert after["lifecycle_count"] == 1 and after["lifecycle"][0]["op"] == "redact"
    text = run("diff", f, "--from", "A", "--to", "B").stdout
    assert "purged" in text and "hunter2" not in text


def test_a_record_live_before_the_window_and_purged_is_not_called_removed(tmp_path: Path) -> None:
    """Live at A in the parent, but the compacted file holds no such record at A: purged, not removed."""
    f = tmp_path / "a.capsule"
    t = [1_700_000_000 * 10**9]

    def clock() -> int:
        t[0] += 10**9
        return t[0]

    with capsule.create(f, clock=clock) as cap:
        with cap.commit() as tx:
            x = tx.remember("password hunter2")
            tx.remember("base fact")
        a = capsule.core.clock.iso(t[0])
        with cap.commit() as tx:
            tx.redact(x, reason="secret")
        b = capsule.core.clock.iso(t[0])

    def diff() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(run("diff", f, "--from", a, "--to", b, "--json").stdout)
        return doc

    assert diff()["removed"]["by_reason"] == {"redacted": 1}
    with capsule.open(f, "a") as cap:
        cap.compact()  # commit times are kept (15.1 history)
    after = diff()
    assert (after["removed"]["count"], after["purged"]["count"]) == (0, 1)


def test_get_and_why_by_prefix_name_a_purged_redaction(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("keep")
            leak = tx.remember("the wifi password is hunter2")
        with cap.commit() as tx:
            tx.redact(leak, reason="credential", actor="security")
        cap.compact()
    for cmd in ("get", "why"):
        for ident in (leak[:8], leak[:20].upper(), leak):
            p = run(cmd, f, ident, ok=False)
            assert p.returncode == 2, p.stderr
            assert f"record {leak} was redacted at" in p.stderr and "by security: credential" in p.stderr, p.stderr
    with capsule.open(f) as cap:
        try:
            cap.get(leak[:10])
        except capsule.Redacted as e:
            assert "credential" in str(e)
        else:
            raise AssertionError("a purged redacted record's prefix read as a record")
    p = run("get", f, "ffff" if not leak.startswith("ffff") else "0000", ok=False)
    assert p.returncode == 2 and "no record with id prefix" in p.stderr


def test_actions_and_checkpoints_take_limit(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    key = capsule.generate_key()
    t = [10**18]

    def clock() -> int:
        t[0] += 10**9
        return t[0]

    with capsule.create(f, clock=clock) as cap:
        for i in range(12):
            cap.run_once(f"{'zyx'[i % 3]}:{i}", lambda i=i: i)
            if i % 2:
                cap.checkpoint(f"ck-{i}", key=key)
    acts = json.loads(run("actions", f, "--limit", "3", "--json").stdout)
    assert [a["key"] for a in acts] == ["z:9", "y:10", "x:11"]  # the three started last, oldest first
    assert len(json.loads(run("actions", f, "--json").stdout)) == 12
    rows = [ln for ln in run("actions", f, "-n", "2").stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == 2 and "y:10" in rows[0] and "x:11" in rows[1]
    cks = json.loads(run("checkpoints", f, "--limit", "2", "--json").stdout)
    assert [c["label"] for c in cks] == ["ck-9", "ck-11"]
    assert len(json.loads(run("checkpoints", f, "--json").stdout)) == 6
    with capsule.open(f) as cap:
        assert [c.label for c in cap.checkpoints(limit=1)] == ["ck-11"]
    for cmd in ("actions", "checkpoints"):
        p = run(cmd, f, "--limit", "0", ok=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_listing_the_newest_few_widens_past_dead_and_filtered_ones(tmp_path: Path) -> None:
    """`list --limit k` masks the newest documents first and widens until k pass (it masked every
    document, a sort of a million ids for five rows); against a brute-force model, with ties."""
    import random

    rng = random.Random(7)
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            recs = [tx.put(capsule.Memory(text=f"m{i}", time=rng.randrange(40) * 10**9,
                                          tags=("odd",) if i % 2 else ())) for i in range(3000)]
        times = {rid: cap.get(rid).time for rid in recs}
        gone = sorted(times, key=lambda r: (-times[r], r))[:2900]  # all but the 100 oldest
        with cap.commit() as tx:
            for rid in gone:
                tx.forget(rid)
        dead = set(gone)
        live = [r for r in times if r not in dead]
        for k, tags in ((5, None), (1, None), (60, None), (200, None), (7, ["odd"])):
            pool = [r for r in live if tags is None or cap.get(r).tags == ("odd",)]
            want = sorted(pool, key=lambda r: (-times[r], r))[:k]
            got = [h.id for h in cap.search(None, k=k, tags=tags)]
            assert got == want, (k, tags)


def test_timeline_of_one_kind_is_the_full_timeline_filtered(tmp_path: Path) -> None:
    """`timeline --kind K` parses only the frames whose bytes hold kind K (a checkpoint listing
    parses none): the same events as the whole timeline filtered, with or without --limit."""
    f = tmp_path / "a.capsule"
    key = capsule.generate_key()
    with capsule.create(f) as cap:
        for i in range(30):
            with cap.commit() as tx:
                rid = tx.remember(f"fact {i} mentions revert and action and task")
                if i % 4 == 0:
                    tx.forget(rid)
            if i % 5 == 0:
                cap.run_once(f"k{i}", lambda: 1)
            if i % 7 == 0:
                cap.tasks.add(f"t{i}")
            if i % 6 == 0:
                cap.checkpoint(f"c{i}", key=key)
    everything = cap_timeline(f)
    for kind in ("checkpoint", "action", "task", "lifecycle", "commit"):
        want = [e for e in everything if e["kind"] == kind]
        assert want, kind
        assert cap_timeline(f, "--kind", kind) == want
        for limit in (1, 3, 100):
            assert cap_timeline(f, "--kind", kind, "--limit", str(limit)) == want[-limit:]
    both = [e for e in everything if e["kind"] in ("action", "checkpoint")]
    assert cap_timeline(f, "--kind", "action", "--kind", "checkpoint", "--limit", "4") == both[-4:]


def cap_timeline(f: Path, *args: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(run("timeline", f, "--json", *args).stdout)["events"]
    return events


def test_a_prefix_shared_with_purged_redacted_ids_stays_ambiguous(tmp_path: Path) -> None:
    """Attack on the purged-prefix change: a prefix two purged ids share said "no record", and one a
    purged id shares with a stored record quietly named the stored one (ambiguous before the
    compaction)."""
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"memory {i}") for i in range(1500)]
        by4: dict[str, list[str]] = {}
        for rid in ids:
            by4.setdefault(rid[:4], []).append(rid)
        pairs = [v for v in by4.values() if len(v) == 2]
        assert len(pairs) >= 2  # 1,500 ids over 65,536 prefixes: about 17 pairs share four digits
        both_gone, one_gone = pairs[0][:2], pairs[1][:2]
        with cap.commit() as tx:
            for rid in (*both_gone, one_gone[0]):
                tx.redact(rid, reason="r")
        cap.compact()
    with capsule.open(f) as cap:
        for prefix, want in ((both_gone[0][:4], "2 redacted records"), (one_gone[0][:4], "a record and 1 redacted")):
            for ident in (prefix, prefix.upper()):
                try:
                    cap.get(ident)
                except capsule.UsageError as e:
                    assert "ambiguous" in str(e) and want in str(e), str(e)
                else:
                    raise AssertionError(f"{ident} resolved")
        assert cap.get(one_gone[1]).text.startswith("memory")  # whole ids and longer prefixes resolve
        try:
            cap.get(one_gone[0][:12])
        except capsule.Redacted as e:
            assert "redacted at" in str(e)
    p = run("get", f, both_gone[0][:4], ok=False)
    assert p.returncode == 2 and "ambiguous" in p.stderr
