"""``capsule compact`` (spec 15.1): policies, lineage proof, redaction purge, run_once,
determinism, bad input, the reader of the old file, I/O faults, the CLI."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
import capsule.format.file as cfile
from capsule.compaction import make_plan
from capsule.core import constants as C
from capsule.format.frames import Merkle, parse_header, raw_payload
from capsule.format.scan import Reader
from tests.clocks import T0, Clock

SECRET = "the vault passphrase is zebra-quartz-7781"
SECRET_VEC = [0.123456789, -0.987654321, 0.5550001, 0.25, -0.125, 0.0625, 0.333, -0.777]


def build(path: Path, key: capsule.PrivateKey | None = None) -> dict[str, str]:
    """A parent with every reason to drop: forgotten, redacted, expired, rolled back."""
    ids: dict[str, str] = {}
    with capsule.create(path, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids["kept"] = tx.remember("the build server is ci-7", tags=["ops"])
            ids["forgot"] = tx.remember("the printer is on floor 2")
            ids["secret"] = tx.remember(SECRET, embedding=SECRET_VEC)
            ids["expired"] = tx.remember("valid for one nanosecond", ttl=1)
            ids["decision"] = tx.decide("ship on friday", rationale="tests pass")
        ids["done"] = "k-done"
        cap.run_once("k-done", lambda: "sent")
        if key is not None:
            cap.checkpoint("day-1", key=key)
        with cap.commit() as tx:
            ids["forget_ev"] = tx.forget(ids["forgot"], reason="moved", actor="alice")
        with cap.commit() as tx:
            ids["redact_ev"] = tx.redact(ids["secret"], reason="a leaked secret", actor="bob")
        cap.tasks.add("t-open", name="still to do")
        with cap.commit() as tx:
            ids["late"] = tx.remember("the deploy window is 10:00")
    return ids


def raw_everything(path: Path) -> bytes:
    """The file's bytes and every frame payload decompressed."""
    data = path.read_bytes()
    header = parse_header(data[: C.HEADER_SIZE])

    class Src:
        def pread(self, off: int, n: int) -> bytes:
            return data[off : off + n]

    parts = [data]
    for fh, payload, _ in Reader(Src(), C.HEADER_SIZE, len(data), 0, header.chain_seed, header.max_frame_len).frames():
        parts.append(raw_payload(fh, payload))
    return b"\n".join(parts)


def records(path: Path) -> list[tuple[int, list[str]]]:
    """(commit time, record ids) of every commit holding records, from the log and the records."""
    from capsule.compaction.plan import commits

    with capsule.open(path) as cap:
        assert cap._snap.commit is not None
        return [(c.info.time, [r[0].hex() for r in c.records])
                for c in commits(cap._h, cap._snap.header, cap._snap.commit.end)]


@pytest.fixture
def parent(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    p = tmp_path / "parent.capsule"
    return p, build(p)


@pytest.mark.parametrize("policy", ["history", "checkpoints", "live"])
def test_policy_keeps_journal_tasks_events_and_verifies_against_parent(parent, tmp_path, policy):
    p, ids = parent
    out = tmp_path / f"{policy}.capsule"
    rep = capsule.compact(p, out, keep=policy)
    assert rep["kept"] + rep["dropped"] == rep["records"]
    v = capsule.verify(out, parent=p)
    assert v.ok, v.first_error
    assert v.lineage["policy"] == policy and v.lineage["kept"] == rep["kept"]
    assert capsule.verify(out).ok  # inherited reverts need no parent to verify (15.1)
    with capsule.open(p) as old, capsule.open(out) as new:
        new_ids = {r.id for r in new.records()}
        # never dropped: the journal, the task events, the lifecycle events
        for r in old.records():
            if r.kind in ("action", "task", "revert"):
                assert r.id in new_ids, r.kind
        assert ids["secret"] not in new_ids and ids["kept"] in new_ids and ids["late"] in new_ids
        assert (ids["forgot"] in new_ids) == (policy == "history")
        assert (ids["expired"] in new_ids) == (policy != "live")
        if policy != "live":
            assert new.state_root == old.state_root  # the live state is the parent's
        assert [t.id for t in new.tasks.due(now=T0 + 10**12)] == ["t-open"]
        assert new.actions()[0].key == "k-done"
        # 15.1: one commit per parent commit holding records, at the parent's times
        old_log = {(c.time, c.records) for c in old.log()}
        assert all(c.time in {t for t, _ in old_log} for c in new.log())
    # every kept record is the parent's, byte for byte, in the parent's order: in the parent's
    # commits at their times (history, checkpoints), or in commits of up to LIVE_GROUP (live)
    got = [(t, [i for i in rs]) for t, rs in records(out) if rs]
    want = [(t, [i for i in rs if i in new_ids]) for t, rs in records(p)]
    if policy != "live":
        assert got == [w for w in want if w[1]]
    else:
        last = max(t for t, _ in records(p))
        assert got == [(last, [i for _, rs in want for i in rs])]


def test_dropped_root_is_the_merkle_root_of_the_sorted_dropped_ids(parent, tmp_path):
    p, ids = parent
    out = tmp_path / "live.capsule"
    capsule.compact(p, out, keep="live")
    with capsule.open(p) as old, capsule.open(out) as new:
        dropped = sorted({bytes.fromhex(r.id) for r in old.records()} - {bytes.fromhex(r.id) for r in new.records()})
    m = Merkle()
    for rid in dropped:
        m.append(hashlib.sha256(b"\x00" + rid).digest())
    lin = capsule.verify(out).lineage
    assert lin["dropped"] == len(dropped) and lin["dropped_root"] == m.root().hex()
    assert bytes.fromhex(ids["secret"]) in dropped and bytes.fromhex(ids["forgot"]) in dropped


def test_history_drops_only_the_redacted_payload_and_keeps_the_state(parent, tmp_path):
    p, ids = parent
    out = tmp_path / "h.capsule"
    rep = capsule.compact(p, out)
    assert rep["policy"] == "history" and rep["dropped"] == 1
    with capsule.open(out) as new:
        assert new.get(ids["forgot"]).text == "the printer is on floor 2"  # history keeps the forgotten


def test_redaction_purges_text_and_embedding_bytes_everywhere(parent):
    p, ids = parent
    before = raw_everything(p)
    vec = np.asarray(SECRET_VEC, dtype="<f4").tobytes()
    assert SECRET.encode() in before and vec in before  # the test can see them where they are
    capsule.compact(p)  # in place
    after = raw_everything(p)
    assert SECRET.encode() not in after and vec not in after
    assert b"zebra" not in after  # nor a token of it (a lexical snapshot is rebuilt, not copied)
    assert capsule.verify(p).ok
    with capsule.open(p) as cap:
        ev = cap.get(ids["redact_ev"])
        assert ev.op == "redact" and ev.drop == (bytes.fromhex(ids["secret"]),)
        assert ev.reason == "a leaked secret" and ev.actor == "bob" and ev.time > T0
        with pytest.raises(capsule.NotFound):
            cap.get(ids["secret"])
        assert SECRET not in str(cap.search("vault passphrase zebra"))


def test_verify_parent_recomputes_the_selection(parent, tmp_path, monkeypatch):
    """A compactor that keeps what the policy drops (or drops what it keeps) is caught."""
    p, ids = parent
    import capsule.compaction.rewrite as rw

    real = rw.make_plan

    def sloppy(*a, **kw):
        plan = real(*a, **kw)
        plan.keep = plan.keep.copy()
        plan.keep[np.flatnonzero(~plan.keep)[0]] = True  # keep one record the policy drops
        return plan

    monkeypatch.setattr(rw, "make_plan", sloppy)
    out = tmp_path / "bad.capsule"
    capsule.compact(p, out, keep="live")
    assert capsule.verify(out).ok  # consistent in itself
    v = capsule.verify(out, parent=p)
    assert not v.ok and v.first_error["check"] == "lineage"
    assert "keeps" in v.first_error["message"]


def test_unrelated_parent_says_so(parent, tmp_path):
    p, _ = parent
    other = tmp_path / "other.capsule"
    build(other)
    out = tmp_path / "c.capsule"
    capsule.compact(p, out)
    v = capsule.verify(out, parent=other)
    assert not v.ok and v.first_error["check"] == "lineage" and "not the parent" in v.first_error["message"]


def test_deterministic_and_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    p = tmp_path / "p.capsule"
    build(p)
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    capsule.compact(p, a, keep="live")
    capsule.compact(p, b, keep="live")
    assert a.read_bytes() == b.read_bytes()
    # compacting the compacted file with the same policy changes nothing but the lineage
    c = tmp_path / "c.capsule"
    rep = capsule.compact(a, c, keep="live")
    assert rep["dropped"] == 0 and rep["kept"] == rep["records"]
    assert records(a) == records(c)
    with capsule.open(a) as x, capsule.open(c) as y:
        assert x.state_root == y.state_root and x.commit_count == y.commit_count
    assert capsule.verify(c, parent=a).ok


def test_key_signs_the_compacted_head(parent, tmp_path):
    p, _ = parent
    key = capsule.generate_key()
    out = tmp_path / "s.capsule"
    rep = capsule.compact(p, out, keep="live", key=key)
    assert rep["signed"]
    v = capsule.verify(out, trust=key.public_key)
    assert v.ok, v.first_error


def test_checkpoints_policy_keeps_a_signed_checkpoints_state(tmp_path):
    key = capsule.generate_key()
    p = tmp_path / "p.capsule"
    ids = build(p, key=key)
    with capsule.open(p) as cap:
        plan = make_plan(cap._h, cap._snap.header, cap._snap.commit.end, "checkpoints")
        live_plan = make_plan(cap._h, cap._snap.header, cap._snap.commit.end, "live")
    # day-1's state holds the secret, redacted since: no policy can keep that state whole
    assert plan.pairs == [] and live_plan.pairs == []
    out = tmp_path / "c.capsule"
    capsule.compact(p, out, keep="checkpoints")
    with capsule.open(out) as new:
        got = {r.id for r in new.records()}
    assert ids["forgot"] in got and ids["expired"] in got  # live at day-1
    assert capsule.verify(out, parent=p).ok


def test_checkpoint_pairs_name_the_matching_commit(tmp_path):
    key = capsule.generate_key()
    p = tmp_path / "p.capsule"
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            a = tx.remember("a")
        cap.checkpoint("c1", key=key)
        with cap.commit() as tx:
            tx.forget(a)
        n = cap.commit_count
    with capsule.open(p) as cap:
        assert cap.commit_count == n
        hist = make_plan(cap._h, cap._snap.header, cap._snap.commit.end, "history")
        live = make_plan(cap._h, cap._snap.header, cap._snap.commit.end, "live")
        c1 = cap.find_checkpoint("c1")
        ordinal = cap.commit_of(c1).commits
    assert [(ck.hash, k) for ck, k in hist.pairs] == [(c1.hash, ordinal)]
    assert live.pairs == []  # `a` is dead now: the live policy drops c1's state


def test_run_once_across_compaction_with_a_kill(tmp_path):
    p = tmp_path / "j.capsule"
    with capsule.create(p) as cap:
        cap.run_once("k-done", lambda: 41)
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time, capsule
        with capsule.open({str(p)!r}, "a") as cap:
            def effect():
                print("IN-EFFECT", flush=True)
                time.sleep(60)
            cap.run_once("k-doubt", effect)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "IN-EFFECT"
    proc.kill()
    proc.wait()
    proc.stdout.close()
    for policy in ("live", "history"):
        out = tmp_path / f"{policy}.capsule"
        capsule.compact(p, out, keep=policy)
        with capsule.open(out, "a") as cap:
            calls: list[int] = []
            assert cap.run_once("k-done", lambda c=calls: c.append(1)) == 41
            assert calls == []  # done: not re-run
            with pytest.raises(capsule.InDoubt):
                cap.run_once("k-doubt", lambda c=calls: c.append(2))
            assert calls == [] and [a.key for a in cap.actions(in_doubt=True)] == ["k-doubt"]


def test_rolled_back_action_stays_in_the_journal(tmp_path):
    key = capsule.generate_key()
    p = tmp_path / "r.capsule"
    with capsule.create(p) as cap:
        cap.checkpoint("before", key=key)
        cap.run_once("side-effect", lambda: "charged")
        cap.rollback("before")
    out = tmp_path / "l.capsule"
    capsule.compact(p, out, keep="live")
    with capsule.open(out, "a") as cap:
        assert cap.run_once("side-effect", lambda: "twice") == "charged"
    assert capsule.verify(out, parent=p).ok


def test_damaged_file_refuses_and_writes_nothing(parent, tmp_path):
    p, _ = parent
    data = bytearray(p.read_bytes())
    with capsule.open(p) as cap:
        frames = [fh for fh, _, _ in Reader(cap._h, C.HEADER_SIZE, cap._snap.commit.end, 0,
                                            cap._snap.header.chain_seed, cap._snap.header.max_frame_len).frames()]
    victim = next(fh for fh in frames if fh.ftype == C.FT_RECORDS)
    data[victim.payload_offset + 3] ^= 0x40
    p.write_bytes(bytes(data))
    v = capsule.verify(p)
    assert not v.ok and v.first_error["offset"] == victim.offset
    with pytest.raises(capsule.CorruptError) as e:
        capsule.compact(p, tmp_path / "out.capsule")
    assert e.value.offset == victim.offset
    assert not (tmp_path / "out.capsule").exists()
    with pytest.raises(capsule.CorruptError):
        capsule.compact(p)
    assert p.read_bytes() == bytes(data)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["parent.capsule"]  # no temporary file left
    r = CliRunner().invoke(app, ["compact", str(p)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and f"offset {victim.offset}" in r.output


def test_locked_and_existing_output_refuse(parent, tmp_path):
    p, _ = parent
    with capsule.open(p, "a"), pytest.raises(capsule.Locked):
        capsule.compact(p, tmp_path / "x.capsule")
    assert not (tmp_path / "x.capsule").exists()
    (tmp_path / "x.capsule").write_bytes(b"mine")
    with pytest.raises(capsule.AlreadyExists):
        capsule.compact(p, tmp_path / "x.capsule")
    assert (tmp_path / "x.capsule").read_bytes() == b"mine"
    r = CliRunner().invoke(app, ["compact", str(p), "-o", str(tmp_path / "x.capsule")])
    assert r.exit_code != 0 and "already exists" in r.output and "Traceback" not in r.output
    with pytest.raises(capsule.UsageError):
        capsule.compact(p, tmp_path / "y.capsule", keep="everything")


def test_a_reader_of_the_old_file_keeps_reading_it(parent):
    p, ids = parent
    with capsule.open(p) as reader:
        capsule.compact(p, keep="live")
        assert reader.get(ids["forgot"]).text == "the printer is on floor 2"  # the old inode
        assert len(list(reader.records())) > 0
    with capsule.open(p) as new, pytest.raises(capsule.NotFound):
        new.get(ids["forgot"])


@pytest.mark.parametrize("prim", ["pwrite", "fsync"])
def test_an_io_fault_leaves_the_old_file(parent, monkeypatch, prim):
    p, _ = parent
    before = p.read_bytes()
    real = {"pwrite": cfile._pwrite, "fsync": cfile._fsync}
    n = 0
    while True:
        calls = [0]

        def failing(*a, _n=n, _real=real[prim], _calls=calls):
            _calls[0] += 1
            if _calls[0] == _n + 1:
                raise OSError(errno.EIO, "injected")
            return _real(*a)

        monkeypatch.setattr(cfile, f"_{prim}", failing)
        try:
            capsule.compact(p, keep="live")
        except (capsule.CapsuleError, OSError):
            monkeypatch.setattr(cfile, f"_{prim}", real[prim])
            assert p.read_bytes() == before, n
            assert sorted(x.name for x in p.parent.iterdir()) == ["parent.capsule"]
            n += 1
            continue
        monkeypatch.setattr(cfile, f"_{prim}", real[prim])
        break
    assert n > 0  # some fault was injected before the run that got through
    assert capsule.verify(p).ok and capsule.verify(p).lineage["policy"] == "live"


def test_cli_summary_and_json(parent, tmp_path):
    p, _ = parent
    r = CliRunner().invoke(app, ["compact", str(p), "-o", str(tmp_path / "c.capsule"), "--keep", "live"])
    assert r.exit_code == 0, r.output
    assert "records kept" in r.output and "dropped" in r.output and "bytes" in r.output
    r = CliRunner().invoke(app, ["compact", str(tmp_path / "c.capsule"), "--json"])
    assert r.exit_code == 0, r.output
    import json

    doc = json.loads(r.output)
    assert doc["policy"] == "history" and doc["dropped"] == 0
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "c.capsule"), "--parent", str(tmp_path / "c.capsule")])
    assert r.exit_code == 1 and "not the parent" in r.output


def test_empty_capsule_compacts(tmp_path):
    p = tmp_path / "e.capsule"
    capsule.create(p).close()
    rep = capsule.compact(p)
    assert rep["records"] == 0 and capsule.verify(p).ok
    os.sync()


@pytest.mark.parametrize("policy", ["history", "checkpoints", "live"])
def test_signed_checkpoints_carry_over_when_their_state_is_kept(tmp_path, policy):
    key = capsule.generate_key()
    p = tmp_path / "p.capsule"
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            a = tx.remember("true on day one")
        cap.checkpoint("day-1", key=key)
        with cap.commit() as tx:
            tx.forget(a, reason="no longer")
            tx.remember("true on day two")
    out = tmp_path / "c.capsule"
    rep = capsule.compact(p, out, keep=policy)
    assert rep["carried"] == (0 if policy == "live" else 1)
    v = capsule.verify(out, trust=key.public_key)
    assert v.ok == (policy != "live"), v.first_error  # live dropped day-1's state: nothing signed is left
    assert capsule.verify(out, parent=p).ok
    signed = tmp_path / "s.capsule"
    capsule.compact(p, signed, keep=policy, key=key)  # --key re-signs the compacted head
    assert capsule.verify(signed, trust=key.public_key).ok


def test_capsule_compact_method_on_a_writer(parent, tmp_path):
    p, ids = parent
    cap = capsule.open(p, "a")
    rep = cap.compact(keep="live")  # the writer's own lock; in place, so the handle is closed after
    assert rep["dropped"] > 0 and cap.closed
    with capsule.open(p, "a") as again, again.commit() as tx:
        tx.remember("written after compaction")
    assert capsule.verify(p).ok


def test_a_fork_and_a_compacted_file_appended_to_compact_again(parent, tmp_path):
    p, ids = parent
    f = tmp_path / "fork.capsule"
    capsule.fork(p, f).close()
    c1 = tmp_path / "c1.capsule"
    capsule.compact(f, c1, keep="history")
    assert capsule.verify(c1, parent=f).ok
    with capsule.open(c1, "a") as cap:
        with cap.commit() as tx:
            late = tx.remember("after the first compaction")
        with cap.commit() as tx:
            tx.forget(late)  # a revert of c1's own, checked in place (not inherited)
    assert capsule.verify(c1).ok
    c2 = tmp_path / "c2.capsule"
    rep = capsule.compact(c1, c2, keep="live")
    assert rep["dropped"] == 2  # the memory forgotten in c1 and the one whose ttl ended
    v = capsule.verify(c2, parent=c1)
    assert v.ok, v.first_error


def test_in_place_removes_what_a_killed_compaction_left(parent):
    p, _ = parent
    stale = p.parent / f".{p.name}.compact-0123456789ab"
    stale.write_bytes(b"half a capsule")
    capsule.compact(p)
    assert not stale.exists() and capsule.verify(p).ok


@pytest.mark.parametrize("policy", ["history", "live"])
def test_the_compacted_file_has_a_vector_snapshot(tmp_path, policy):
    from capsule.search.vindex import BLOB_TYPE

    p = tmp_path / "v.capsule"
    rng = np.random.default_rng(7)
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"vector memory {i}", embedding=rng.standard_normal(8).tolist()) for i in range(400)]
        cap.search(None, vector=rng.standard_normal(8).tolist(), k=3)  # loads the index: a snapshot on close
        with cap.commit() as tx:
            for rid in ids[:50]:
                tx.forget(rid)
    with capsule.open(p) as cap:
        assert BLOB_TYPE in cap._snap.blobs
    out = tmp_path / "c.capsule"
    capsule.compact(p, out, keep=policy)
    with capsule.open(out) as new:
        assert BLOB_TYPE in new._snap.blobs  # history: the parent's graph; live: built from the kept
        q = rng.standard_normal(8).tolist()
        with capsule.open(p) as old:
            assert [h.id for h in new.search(None, vector=q, k=5)] == [h.id for h in old.search(None, vector=q, k=5)]
    v = capsule.verify(out, parent=p)
    assert v.ok, v.first_error


def test_a_large_index_is_built_by_the_compaction_not_by_every_search(tmp_path, monkeypatch):
    """16.3: a close leaves an index over CLOSE_BUILD_MAX entries to the first search, which
    then builds it in every process; a compaction builds it once (the lifecycle benchmark found
    compacted files of a million records with no vector snapshot)."""
    import capsule.compaction.rewrite as rw
    import capsule.handle.carry as carry
    from capsule.search import part
    from capsule.search.vindex import BLOB_TYPE

    # the close-time cap, small for the test, wherever a compaction might read it (it used to
    # import it into both modules, and left a larger index unbuilt)
    for mod in (part, rw, carry):
        monkeypatch.setattr(mod, "CLOSE_BUILD_MAX", 300, raising=False)
    p = tmp_path / "v.capsule"
    rng = np.random.default_rng(11)
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"m {i}", embedding=rng.standard_normal(8).tolist()) for i in range(700)]
        with cap.commit() as tx:
            tx.lifecycle("forget", drop=ids[:100])
    out = tmp_path / "c.capsule"
    capsule.compact(p, out, keep="live")  # 600 kept entries: over the close-time cap
    with capsule.open(out) as new:
        assert BLOB_TYPE in new._snap.blobs
        assert new.index_info()["doubt"] is None
