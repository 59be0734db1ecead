"""``redact`` names every copy of the payload under another tier (a review's finding 1; 7.7.1).

``promote`` and ``demote`` write the same memory with another tier, so under another id. Redacting
the id ``put`` printed after a promote left the secret live in the promoted copy (state, search,
``compact --keep live``), and redacting the promoted copy left the original's payload in history
past the next compaction. A redaction now names the whole promote/demote chain, in either
direction. A supersede writes a new text, so its replacement is not redacted; the command says
on stderr that it is live and kept the old tags, meta and source.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import capsule

from .clirun import capsule_cli
from .test_compact import raw_everything

T0 = 1_700_000_000 * 10**9
SECRET = "HUNTER2-XYZZY"


def clock():  # type: ignore[no-untyped-def]
    it = itertools.count(T0, 10**9)
    return lambda: next(it)


def _chain(p: Path, hops: list[str]) -> list[str]:
    """A secret memory (text, meta, an embedding), then promote/demote to each tier of ``hops``."""
    emb = np.array([0.125, -0.5, 0.75, 0.25], np.float32)
    with capsule.create(p, clock=clock()) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"the db password is {SECRET}", meta={"pw": SECRET}, tier="scratch", embedding=emb)]
            tx.remember("an unrelated memory about lunch")
        for tier in hops:
            with cap.commit() as tx:
                ids.append(tx.promote(ids[-1], tier))
    return ids


def _leaks(p: Path) -> bool:
    with capsule.open(p) as cap:
        text = cap.state().to_json_bytes()
        hits = cap.search(SECRET, k=5, mode="lexical")
        rec = [r for r in cap.records() if not getattr(r, "redacted", False) and SECRET in getattr(r, "text", "")]
    return SECRET.encode() in text or bool(hits) or bool(rec)


@pytest.mark.parametrize("which", [0, -1, 1])  # the original, the live copy, one in between
@pytest.mark.parametrize("hops", [["working"], ["validated", "working"], ["working", "scratch"]])
def test_redacting_any_copy_redacts_the_chain_and_compaction_purges_it(tmp_path: Path, hops: list[str],
                                                                      which: int) -> None:
    p = tmp_path / "a.capsule"
    ids = _chain(p, hops)
    with capsule.open(p, "a", clock=clock()) as cap:
        with cap.commit() as tx:
            ev = tx.redact(ids[which][:8], reason="credential")
        named = {x.hex() for x in cap.get(ev).drop}
    assert named == set(ids)  # a round trip back to the original id names it once
    assert not _leaks(p)
    for keep in ("history", "live"):
        out = tmp_path / f"{keep}.capsule"
        capsule.compact(p, out=out, keep=keep)
        raw = raw_everything(out)
        assert SECRET.encode() not in raw and np.float32(0.125).tobytes() + np.float32(-0.5).tobytes() not in raw
        rep = capsule.verify(out, parent=p)
        assert rep.ok, rep.first_error


def test_a_promote_and_a_redact_in_one_block(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=clock()) as cap:
        with cap.commit() as tx:
            m = tx.remember(f"the password is {SECRET}")
        with cap.commit() as tx:
            top = tx.promote(m, "validated")
            ev = tx.redact(m, reason="leak")
        assert {x.hex() for x in cap.get(ev).drop} == {m, top}
    assert not _leaks(p)


def test_a_redacted_copy_is_not_named_again(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    ids = _chain(p, ["working", "validated"])
    with capsule.open(p, "a", clock=clock()) as cap:
        with cap.commit() as tx:
            first = tx.lifecycle("redact", [ids[0]])  # the low-level entry point names what it is given
        with cap.commit() as tx:
            second = tx.redact(ids[-1])
        assert [x.hex() for x in cap.get(first).drop] == [ids[0]]
        assert {x.hex() for x in cap.get(second).drop} == {ids[1], ids[2]}


def test_the_command_names_a_live_memory_that_superseded_it(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    old = capsule_cli("put", str(p), "--text", f"the password is {SECRET}", "--meta", f"pw={SECRET}").stdout.strip()
    sup = json.loads(capsule_cli("supersede", str(p), old[:8], "--text", "the password was rotated", "--json").stdout)
    r = capsule_cli("redact", str(p), old[:8], "--json")
    assert json.loads(r.stdout)["records"] == [old]
    assert f"{old[:16]} was superseded by {sup['new'][:16]}, which is live" in r.stderr, r.stderr
    r = capsule_cli("redact", str(p), sup["new"][:8])
    assert r.stderr == ""  # nothing superseded it


def test_a_bad_id_is_named_as_why_names_it(tmp_path: Path) -> None:
    """It said `forget must be a record id (64 hex digits)`, though a 4-digit prefix is taken too."""
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    for bad in ("zzzzzzzz", "a" * 80):
        r = capsule_cli("forget", str(p), bad, ok=False)
        assert r.returncode == 2 and "is not a record id or id prefix (4 to 64 hex digits)" in r.stderr, r.stderr


def test_after_a_live_compaction_the_live_copy_is_redacted(tmp_path: Path) -> None:
    """`compact --keep live` drops the original a kept promote event names: redact skips it
    (nothing of it is left) instead of failing 'no record' and leaving the secret live."""
    p = tmp_path / "a.capsule"
    ids = _chain(p, ["validated"])
    out = tmp_path / "b.capsule"
    capsule.compact(p, out=out, keep="live")
    with capsule.open(out, "a", clock=clock()) as cap:
        with cap.commit() as tx:
            ev = tx.redact(ids[-1], reason="leak")
        assert [x.hex() for x in cap.get(ev).drop] == [ids[-1]]
    assert not _leaks(out)


def test_many_redactions_in_one_block_read_the_events_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.format import kindwalk

    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=clock()) as cap:
        with cap.commit() as tx:
            ms = [tx.remember(f"secret {i}", tier="scratch") for i in range(300)]
        with cap.commit() as tx:
            tops = [tx.promote(m, "working") for m in ms]
        walks = [0]
        real = kindwalk.walk

        def counting(*a, **kw):  # type: ignore[no-untyped-def]
            walks[0] += 1
            return real(*a, **kw)

        monkeypatch.setattr(kindwalk, "walk", counting)
        with cap.commit() as tx:
            for m in ms[:200]:
                tx.redact(m)
        assert walks[0] <= 2, walks[0]  # once per block, not once per redaction
        assert all(not cap.is_live(t) for t in tops[:200]) and all(cap.is_live(t) for t in tops[200:])
