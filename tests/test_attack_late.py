"""A hostile pass over four late changes: the state root from the liveness fold (13.1),
verify's lifecycle-target check (7.7.1), ``compact --keep live`` in commits of
LIVE_GROUP (15.1 Layout) and ``pack --append`` skipping redacted files.

The state root is checked against its definition, ``state_root_of`` over
``live_records(all records)`` (13.1), by random lifecycles in one writer, across reopen,
in views and in a reader that follows the writer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capsule
from capsule.format.records import _REGISTRY, encode_record, encode_value, memory_value
from capsule.state.checkpoints import commit_of
from capsule.state.fold import live_records
from capsule.state.stateroot import state_root_of
from tests.clocks import Clock

T0 = 1_600_000_000 * 10**9


def definition(cap: capsule.Capsule) -> str:
    """13.1 as written: the root over the ids of live_records(every record, in commit order)."""
    return state_root_of(sorted(bytes.fromhex(r.id) for r in live_records(cap._store.records())))


def mem_id(k: int) -> bytes:
    return encode_value("memory", memory_value(f"fact {k}", time=T0 + k))[0]


def forge_revert(cap: capsule.Capsule, **fields: Any) -> None:
    """A revert the checked verbs would not write (a hostile or older writer's)."""
    rev = _REGISTRY["revert"].build(time=cap.clock(), after=bytes.fromhex(cap.root), **fields)
    rid, data = encode_record(rev)
    cap._write_commit([(rid, "revert", data)])


OPS = st.lists(st.tuples(st.sampled_from(["remember", "put_many", "forget", "redact", "supersede", "promote",
                                          "rollback", "checkpoint", "tx_checkpoint", "readd", "restore_redacted",
                                          "drop_future", "reopen", "view", "index"]),
                         st.integers(0, 10**6)), min_size=1, max_size=24)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_state_root_matches_its_definition(tmp_path_factory: pytest.TempPathFactory,
                                           ops: list[tuple[str, int]]) -> None:
    p = tmp_path_factory.mktemp("root") / "r.capsule"
    key = capsule.generate_key()
    cap = capsule.create(p, clock=Clock())
    reader: capsule.Capsule | None = None
    roots: dict[int, str] = {}  # commit seq -> the definition's root there
    nxt = 0  # the next fact number
    ckpts = 0
    try:
        for op, pick in ops:
            mems = {m["id"] for ms in cap.state().memories.values() for m in ms}
            live = sorted(mems)
            target = live[pick % len(live)] if live else None
            with contextlib.suppress(capsule.UsageError):
                if op == "remember" or target is None and op in ("forget", "supersede", "promote"):
                    with cap.commit() as tx:
                        tx.remember(f"fact {nxt}", time=T0 + nxt)
                    nxt += 1
                elif op == "put_many":
                    n = 1 + pick % 4
                    with cap.commit() as tx:
                        tx.put_many([{"text": f"fact {nxt + i}", "time": T0 + nxt + i} for i in range(n)])
                    nxt += n
                elif op == "forget":
                    with cap.commit() as tx:
                        tx.forget(target)
                elif op == "redact" and nxt:
                    with cap.commit() as tx:
                        tx.redact(mem_id(pick % nxt))
                elif op == "supersede":
                    with cap.commit() as tx:
                        tx.supersede(target, f"v2 {pick}")
                elif op == "promote":
                    with cap.commit() as tx:
                        tx.promote(target, "validated")
                elif op == "rollback" and ckpts:
                    cap.rollback(f"c{pick % ckpts}", key=key if pick % 2 else None)
                elif op == "checkpoint":
                    cap.checkpoint(f"c{ckpts}", key=key)
                    ckpts += 1
                elif op == "tx_checkpoint":  # events and the checkpoint of their state in one commit
                    with cap.commit() as tx:
                        if target is not None and pick % 2:
                            tx.forget(target)
                        if nxt and pick % 3 == 0:  # a re-add (its restore event) in the checkpointed commit
                            tx.remember(f"fact {pick % nxt}", time=T0 + pick % nxt)
                        tx.remember(f"fact {nxt}", time=T0 + nxt)
                        tx.checkpoint(f"c{ckpts}", key=key)
                    nxt += 1
                    ckpts += 1
                elif op == "readd" and nxt:
                    k = pick % nxt
                    with cap.commit() as tx:
                        tx.remember(f"fact {k}", time=T0 + k)
                elif op == "restore_redacted" and nxt:
                    forge_revert(cap, restore=[mem_id(pick % nxt)])
                elif op == "drop_future":
                    forge_revert(cap, op="forget", drop=[mem_id(nxt + pick % 3)])
                elif op == "index":  # TABLE frames: the stored ids come from their sorted columns (9.1)
                    cap._write_commit([], force_index=True)
                elif op == "reopen":
                    cap.close()
                    cap = capsule.open(p, "a", clock=Clock())
                elif op == "view" and roots:
                    seq = sorted(roots)[pick % len(roots)]
                    with capsule.open(p, at=seq) as view:
                        assert view.state_root == roots[seq] == definition(view), seq
            want = definition(cap)
            roots[cap._snap.commit.seq] = want
            assert cap.state_root == want, op
            if reader is None:
                reader = capsule.open(p)
            else:
                reader.refresh()
            assert reader.state_root == want, op
        with capsule.open(p) as again:
            assert again.state_root == definition(again) == cap.state_root
            for ck in again.checkpoints():  # each signed the definition's root of its commit
                assert ck.state_root == roots[commit_of(again._store, ck).seq], ck.label
    finally:
        cap.close()
        if reader is not None:
            reader.close()


# --- compact --keep live in commits of LIVE_GROUP (15.1 Layout) ------------------------------------


def commit_sizes(p: Path) -> list[tuple[int, int]]:
    """(records, time) of each commit of ``p`` that holds records, in file order."""
    from capsule.compaction.plan import commits

    with capsule.open(p) as c:
        return [(len(got.records), got.info.time) for got in commits(c._h, c._snap.header, c._snap.commit.end)
                if got.records]


def live_parent(p: Path, n: int, *, forget: int = 0, key: Any = None) -> dict[str, Any]:
    """n memories in n commits, the first ``forget`` forgotten; a checkpoint of the end with ``key``."""
    with capsule.create(p, clock=Clock()) as cap:
        ids = []
        for i in range(n):
            with cap.commit() as tx:
                ids.append(tx.remember(f"fact {i}", time=T0 + i))
        if forget:
            with cap.commit() as tx:
                for x in ids[:forget]:
                    tx.forget(x)
        if key is not None:
            cap.checkpoint("end", key=key)
        return {"ids": ids, "root": cap.state_root}


@pytest.mark.parametrize(("n", "forget"), [(7, 0), (6, 0), (3, 0), (2, 0), (5, 5), (7, 1), (0, 0)])
def test_live_compaction_in_small_groups_verifies_and_keeps_the_state(tmp_path: Path, monkeypatch: Any,
                                                                      n: int, forget: int) -> None:
    from capsule.compaction import plan as cplan

    monkeypatch.setattr(cplan, "LIVE_GROUP", 3)
    key = capsule.generate_key()
    p, out = tmp_path / "p.capsule", tmp_path / "o.capsule"
    par = live_parent(p, n, forget=forget, key=key)
    rep = capsule.compact(p, out, keep="live", key=key)
    kept = rep["kept"]
    want = [3] * (kept // 3) + ([kept % 3] if kept % 3 else [])
    assert [s for s, _ in commit_sizes(out)][: len(want)] == want, (kept, commit_sizes(out))
    assert rep["commits"] == max(1, len(want))
    r = capsule.verify(out, parent=p)
    assert r.ok, r.first_error
    with capsule.open(out) as c:
        assert c.state_root == par["root"] == definition(c)
        for i in range(forget, n):  # the lexical catalog was fed every group (16.8)
            assert [h.id for h in c.search(f"fact {i}", k=1, mode="lexical")] == [par["ids"][i]], i
    assert rep["carried"] == 1  # the checkpoint of the final state is carried
    assert capsule.verify(out).ok  # without the parent: a COMMIT ends right after the kept records
    again = capsule.compact(out, tmp_path / "o2.capsule", keep="live")  # a compacted file compacted again
    assert again["kept"] >= kept and capsule.verify(tmp_path / "o2.capsule", parent=out).ok
    with capsule.open(tmp_path / "o2.capsule") as c:
        assert c.state_root == par["root"] == definition(c)


@pytest.mark.parametrize(("n", "made", "checked"), [(7, 3, 4), (6, 3, 6), (7, 3, 65_536), (6, 6, 3)])
def test_verify_parent_refuses_a_live_file_grouped_otherwise(tmp_path: Path, monkeypatch: Any, n: int, made: int,
                                                            checked: int) -> None:
    """A compacted file whose kept records are right but grouped in commits of another size
    is not the 15.1 layout: verify --parent says lineage."""
    from capsule.compaction import plan as cplan

    p, out = tmp_path / "p.capsule", tmp_path / "o.capsule"
    live_parent(p, n, forget=0)
    monkeypatch.setattr(cplan, "LIVE_GROUP", made)
    capsule.compact(p, out, keep="live")
    assert capsule.verify(out, parent=p).ok
    monkeypatch.setattr(cplan, "LIVE_GROUP", checked)
    r = capsule.verify(out, parent=p)
    assert not r.ok and r.first_error["check"] == "lineage", r.first_error
    assert capsule.verify(out).ok  # without the parent the layout is not known


@pytest.mark.parametrize("group", [3, 4, 65_536])
def test_live_compaction_carries_only_checkpoints_of_the_final_state(tmp_path: Path, monkeypatch: Any,
                                                                     group: int) -> None:
    from capsule.compaction import plan as cplan

    monkeypatch.setattr(cplan, "LIVE_GROUP", group)
    key = capsule.generate_key()
    p, out = tmp_path / "p.capsule", tmp_path / "o.capsule"
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"fact {i}", time=T0 + i) for i in range(5)]
        cap.checkpoint("mid", key=key)  # a state the live file does not keep
        with cap.commit() as tx:
            tx.forget(ids[0])
            tx.remember("fact 9", time=T0 + 9)
        cap.checkpoint("end1", key=key)
        cap.checkpoint("end2", key=key)  # two signatures of the one final state
        with cap.commit() as tx:  # gone and back: the final state again, after it
            tx.remember("fact 10", time=T0 + 10)
        with cap.commit() as tx:
            tx.forget(mem_id(10))
        cap.checkpoint("end3", key=key)
        root = cap.state_root
    rep = capsule.compact(p, out, keep="live")
    assert rep["carried"] == 3, rep  # end1, end2, end3; not mid
    r = capsule.verify(out, parent=p)  # checkpoint-state: each carried one names a commit holding its state
    assert r.ok, r.first_error
    assert capsule.verify(out).ok
    with capsule.open(out) as c:
        assert c.state_root == root == definition(c)


# --- pack --append and a redacted file (7.7.1) -----------------------------------------------------


def packed_live(cap: capsule.Capsule) -> dict[str, tuple[str, int, str]]:
    return {m["id"]: (m["meta"]["path"], m["meta"]["chunk"], m["text"])
            for ms in cap.state().memories.values() for m in ms}


def test_pack_append_keeps_the_unredacted_chunks_of_a_redacted_file(tmp_path: Path) -> None:
    """A file of many chunks, one redacted: the unchanged file is skipped whole, its other
    chunks stay live, nothing is written, with or without --prune."""
    src, out = tmp_path / "docs", tmp_path / "d.capsule"
    src.mkdir()
    (src / "a.md").write_text("alpha one. " * 40 + "\n\n" + "SECRET hunter2. " * 40)
    (src / "b.md").write_text("bravo")
    capsule.pack(src, out, embedder=None, chunk_chars=200)
    with capsule.open(out, "a") as cap:
        with cap.commit() as tx:
            for m in [m for m in cap.records("memory") if "hunter2" in m.text]:
                tx.redact(m.id)
        before = packed_live(cap)
    assert any(path == "a.md" for path, _, _ in before.values())
    for prune in (False, True):
        rep = capsule.pack(src, out, append=True, embedder=None, chunk_chars=200, prune=prune)
        assert rep.records == 0 and ("a.md", "its content was redacted (7.7.1): not packed again") in rep.skipped
        with capsule.open(out) as cap:
            assert packed_live(cap) == before and not cap.search("hunter2", k=3, mode="lexical")


def test_pack_append_of_a_file_changed_back_to_redacted_content_drops_the_stale_version(tmp_path: Path) -> None:
    """A file packed (v1), its secret chunk redacted, changed (v2, packed), then changed back to v1:
    v1 is not packed again (7.7.1), and v2, which the folder no longer holds, must not stay live
    as that file's content (it did: the skip left the other version's chunks live)."""
    src, out = tmp_path / "docs", tmp_path / "d.capsule"
    src.mkdir()
    v1 = "SECRET hunter2 in version one"
    (src / "a.md").write_text(v1)
    (src / "b.md").write_text("bravo")
    capsule.pack(src, out, embedder=None)
    with capsule.open(out, "a") as cap, cap.commit() as tx:
        tx.redact(next(m.id for m in cap.records("memory") if "hunter2" in m.text))
    (src / "a.md").write_text("version two, clean")
    assert capsule.pack(src, out, append=True, embedder=None).records == 1
    (src / "a.md").write_text(v1)
    rep = capsule.pack(src, out, append=True, embedder=None)
    assert ("a.md", "its content was redacted (7.7.1): not packed again") in rep.skipped
    with capsule.open(out) as cap:
        assert sorted(packed_live(cap).values()) == [("b.md", 0, "bravo")]
        assert not cap.search("hunter2", k=3, mode="lexical") and not cap.search("version two", k=3, mode="lexical")
    assert capsule.verify(out).ok
    again = capsule.pack(src, out, append=True, embedder=None)  # and the next resync is quiet
    assert again.records == 0 and again.sync.events == 0


def test_an_edit_elsewhere_in_a_file_does_not_pack_its_redacted_chunk_again(tmp_path: Path) -> None:
    """Found here, fixed by the lead: editing another part of a file whose chunk was redacted
    made the file 'changed', and every chunk was written again, the redacted text included (a new
    id, live and searchable). A chunk whose text a redacted chunk of that path held is not written,
    and the next re-pack of the same folder writes nothing."""
    src, out = tmp_path / "docs", tmp_path / "d.capsule"
    src.mkdir()
    secret = "SECRET hunter2. " * 40
    (src / "a.md").write_text("alpha one. " * 40 + "\n\n" + secret)
    capsule.pack(src, out, embedder=None, chunk_chars=200)
    with capsule.open(out, "a") as cap, cap.commit() as tx:
        for m in [m for m in cap.records("memory") if "hunter2" in m.text]:
            tx.redact(m.id)
    (src / "a.md").write_text("alpha two. " * 40 + "\n\n" + secret)
    rep = capsule.pack(src, out, append=True, embedder=None, chunk_chars=200)
    assert rep.sync.changed.files == 1
    with capsule.open(out) as cap:
        texts = [t for _, _, t in packed_live(cap).values()]
        assert texts and all("hunter2" not in t for t in texts) and any("alpha two" in t for t in texts)
        assert not cap.search("hunter2", k=3, mode="lexical")
    assert capsule.verify(out).ok
    assert capsule.pack(src, out, append=True, embedder=None, chunk_chars=200).records == 0


# --- verify: lifecycle-target (7.7.1) ----------------------------------------------------------------


def test_lifecycle_target_reports_the_first_bad_event_in_file_order(tmp_path: Path) -> None:
    """The targets are read in the order they are stored, not the events': the first bad event
    in the file is the one named, whichever of its targets was stored first; a rollback-style
    revert (no op) may drop any kind; a target stored after the event is still checked."""
    p = tmp_path / "t.capsule"
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            first = tx.constrain("no deploys on Fridays", scope="deploy")
            tx.remember("a memory", time=T0)
        later = _REGISTRY["constraint"].build(time=T0 + 1, text="freeze", scope="release")
        later_id, later_data = encode_record(later)
        forge_revert(cap, drop=[bytes.fromhex(first)])  # no op: a rollback may drop a constraint
        assert capsule.verify(p).ok
        forge_revert(cap, op="forget", drop=[later_id])  # names a constraint stored only later
        bad_off = cap._snap.commit.offset
        forge_revert(cap, op="redact", drop=[bytes.fromhex(first)])  # its target was stored first
        cap._write_commit([(later_id, "constraint", later_data)])
    r = capsule.verify(p)
    assert not r.ok and r.first_error["check"] == "lifecycle-target", r.first_error
    assert later_id.hex() in r.first_error["message"] and "a forget event" in r.first_error["message"]
    assert r.first_error["offset"] < bad_off


def test_state_root_of_forgotten_ids_ending_in_a_zero_byte(tmp_path: Path) -> None:
    """The live ids are numpy ``S32`` rows, which drop trailing zero bytes when read back: a dead id
    ending in 00 must still leave the root (in the tables, the incremental cache and a checkpoint)."""
    p = tmp_path / "z.capsule"
    key = capsule.generate_key()
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = tx.put_many([{"text": f"fact {i}", "time": T0 + i} for i in range(1500)])
        zeros = [x for x in ids if x.endswith("00")]
        assert len(zeros) >= 2  # fixed times: fixed ids
        cap._write_commit([], force_index=True)
        with cap.commit() as tx:
            tx.forget(zeros[0])
        assert cap.state_root == definition(cap)
        with cap.commit() as tx:
            tx.forget(zeros[1])
            tx.checkpoint("k", key=key)
        assert cap.state_root == definition(cap)
    with capsule.open(p) as c:
        assert c.state_root == definition(c) == c.checkpoints()[-1].state_root
    assert capsule.verify(p).ok
