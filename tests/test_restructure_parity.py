"""The layered restructure (issue #9) changed no behaviour: what must still hold.

Each test pins something the flat package did (checked against the pre-restructure
checkout), where the facade split (``handle`` over ``format.store``,
``format.writer``, ``state.checkpoints``, ``search.part``) could have changed it:
how often the injected clock is read, the bytes written under an injected clock,
the state root after commits, rollback and refresh, pinned views, hits of a
closed handle, the vector snapshot written on close, and the public surface.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import capsule

S = 1_000_000_000
T0 = 1_767_225_600 * S


class Ticks:
    """A clock that moves on by one second at every reading, and counts them."""

    def __init__(self, start: int = T0) -> None:
        self.t = start
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        self.t += S
        return self.t


# --- the injected clock -------------------------------------------------------------


def test_one_clock_reading_per_remembered_embedding(tmp_path: Path) -> None:
    """A memory reads the clock once (its time); an embedding must not read it again.

    Before the restructure consecutive memories got consecutive readings; the
    facade read the clock once more per embedding (``params_for(..., clock())``),
    which shifts record times, content ids and the file under a stepping clock."""
    clock = Ticks()
    with capsule.create(tmp_path / "a.capsule", clock=clock, file_id=b"\x01" * 16) as cap:
        start = clock.t
        with cap.commit() as tx:
            ids = [tx.remember(f"m{i}", embedding=[1.0, float(i), 0.5]) for i in range(3)]
        assert [cap.get(r).time for r in ids] == [start + S, start + 2 * S, start + 3 * S]
        assert clock.reads == 1 + 3 + 1  # create's commit, one per memory, this commit


def test_configured_vectors_read_the_clock_once_more_for_the_vindex_record(tmp_path: Path) -> None:
    clock = Ticks()
    with capsule.create(tmp_path / "a.capsule", clock=clock, file_id=b"\x02" * 16) as cap:
        cap.configure_vectors(space="ip", M=8)  # no dim: written with the first embedding
        start = clock.t
        with cap.commit() as tx:
            a = tx.remember("first", embedding=[1.0, 0.0])  # its time, then the vindex record's
            b = tx.remember("second", embedding=[0.0, 1.0])
        assert (cap.get(a).time, cap.get(b).time) == (start + S, start + 3 * S)
        vindex = list(cap.records(kind="vindex"))
        assert len(vindex) == 1 and vindex[0].time == start + 2 * S
        assert (vindex[0].space, vindex[0].M, vindex[0].dim) == ("ip", 8, 2)


#: SHA-256 of the file `_pinned_scenario` writes. Only an intended format change
#: (spec/CHANGES.md) may change it: the pre-restructure 1.1 writer (commit 110e499) wrote
#: d19bceef44a9c2e3b67668487f75307d5cf22abb4545f29eb4c42e5f26e476d2; the 1.2 writer (header
#: minor 2, the INDEX `vectors` map, journal and lexical snapshot blobs, 9.3's checkpoint
#: INDEX sizes) wrote 97dcb1a495b2ffee4c25682e8a3fa576b60253d42d41919ad8e8273dc3f630cc, which
#: the 1.3 writer still writes when its header says minor 2; with minor 3 it wrote
#: 923eb123281d18ace8d5318170eb5c5ac550560bbe35d5e11e7b144f00240941, which the 1.4 writer still
#: writes when its header says minor 3 (too few records for a lexical snapshot); with minor 4 it
#: writes this one.
PINNED_SHA256 = "35b0c0e5868fdfab0f0641c0ea834557a2ab17f68d31bcf3e0fbcc638267f369"


def _pinned_scenario(path: Path) -> None:
    clock = Ticks()
    key = capsule.PrivateKey.from_seed(b"\x07" * 32)
    with capsule.create(path, clock=clock, file_id=b"\x5a" * 16) as cap:
        cap.configure_vectors(space="ip", M=8)
        with cap.commit() as tx:
            a = tx.remember("alice owns billing", tags=["people"], meta={"team": "payments"},
                            embedding=[0.1, 0.7, 0.2])
            tx.remember("p95 budget is 300 ms", embedding=[0.9, 0.1, 0.0], tier="validated")
            tx.note("check the staging database")
        with cap.commit() as tx:
            tx.decide("ship on thursday", evidence=[a])
            tx.remember("after the decision", embedding=[0.2, 0.2, 0.9])
            tx.checkpoint("day-1", key=key)
        with cap.commit() as tx:
            tx.remember("dropped by the rollback", embedding=[0.3, 0.3, 0.3])
        cap.rollback("day-1", key=key)
        cap.run_once("email:1", lambda: {"sent": True})
        cap.tasks.add("fetch")


def test_bytes_under_an_injected_clock_match_the_flat_package(tmp_path: Path) -> None:
    p = tmp_path / "pin.capsule"
    _pinned_scenario(p)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == PINNED_SHA256
    assert capsule.verify(p).ok


# --- state root, refresh, views -------------------------------------------------------


def _fresh_root(path: Path) -> str:
    with capsule.open(path) as c:
        return c.state_root


def test_state_root_follows_commits_checkpoints_rollback_and_refresh(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    key = capsule.PrivateKey.from_seed(b"\x03" * 32)
    w = capsule.create(p, clock=Ticks(), file_id=b"\x03" * 16)
    r = capsule.open(p)
    try:
        roots = [w.state_root]  # cached before any commit: the cache must follow
        for i in range(5):
            with w.commit() as tx:
                tx.remember(f"m{i}", embedding=[1.0, float(i)])
            if i == 1:
                w.checkpoint("c1", key=key)
            if i == 3:
                assert w.rollback("c1", key=key) is not None
            assert r.refresh() is True and r.refresh() is False
            assert w.state_root == r.state_root == _fresh_root(p)
            roots.append(w.state_root)
        assert roots[4] == roots[2]  # rolled back to c1's state
        assert len(set(roots)) == len(roots) - 1
        with w.commit() as tx:  # a record the rollback dropped comes back through a restore
            tx.remember("m2", embedding=[1.0, 2.0], time=next(m.time for m in w.records("memory") if m.text == "m2"))
        assert r.refresh() and w.state_root == r.state_root == _fresh_root(p)
        assert w.state_root not in roots
        assert "m2" in {m["text"] for m in w.state().to_dict()["memories"]["working"]}
    finally:
        r.close()
        w.close()


def test_a_reader_follows_a_writer_in_another_process(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("parent", embedding=[1.0, 0.0])
    with capsule.open(p) as r:
        before = (r.state_root, len(r), [h.text for h in r.search(vector=[0.0, 1.0], k=2)])
        code = textwrap.dedent(f"""
            import capsule
            with capsule.open({str(p)!r}, "a") as c, c.commit() as tx:
                tx.remember("child", embedding=[0.0, 1.0])
        """)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
        assert (r.state_root, len(r)) == before[:2]  # a reader's snapshot stays until refresh
        assert r.refresh() is True
        assert len(r) == before[1] + 1
        assert r.state_root == _fresh_root(p) != before[0]
        assert [h.text for h in r.search(vector=[0.0, 1.0], k=1)] == ["child"]
        assert [h.text for h in r.search("child", mode="lexical")] == ["child"]


def test_a_view_is_pinned_and_searches_at_its_commit_time(tmp_path: Path) -> None:
    clock = Ticks()
    key = capsule.PrivateKey.from_seed(b"\x04" * 32)
    with capsule.create(tmp_path / "a.capsule", clock=clock) as cap:
        with cap.commit() as tx:
            short = tx.remember("short lived deploy note", embedding=[1.0, 0.0], ttl=10 * S)
            tx.remember("lasting deploy note", embedding=[0.9, 0.1])
        cap.checkpoint("day-1", key=key)
        clock.t += 3600 * S  # the short-lived memory has expired by now
        with cap.commit() as tx:
            tx.remember("later deploy note", embedding=[0.8, 0.2])
        live = {h.id for h in cap.search(vector=[1.0, 0.0], k=10)}
        assert short not in live
        ck = cap.find_checkpoint("day-1")
        assert ck is not None
        with cap.view("day-1") as v:
            assert v.refresh() is False
            assert len(v) == 2 and v.state_root == ck.body.state_root.hex()
            assert short in {h.id for h in v.search(vector=[1.0, 0.0], k=10)}  # alive at the view's commit
            assert short in {h.id for h in v.search("short", mode="lexical")}
            hits = v.search("lasting", mode="lexical")
            with pytest.raises(capsule.ReadOnlyError):
                v.commit()
        # a lexical hit of a closed handle still loads the whole record (with its embedding)
        assert [h.record.embedding.tolist() for h in hits] == [pytest.approx([0.9, 0.1])]


def test_hit_record_after_the_handle_is_closed(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            rid = tx.remember("alice owns billing", tags=["people"], embedding=[0.1, 0.7, 0.2])
        hits = cap.search("alice", mode="lexical")
    assert cap.closed
    assert [h.id for h in hits] == [rid]
    rec = hits[0].record
    assert rec.text == "alice owns billing" and rec.tags == ("people",) and len(rec.embedding) == 3
    with pytest.raises(capsule.UsageError):
        cap.get(rid)
    with pytest.raises(capsule.UsageError):
        cap.search("alice")


# --- the search part of the handle ------------------------------------------------------


def test_vector_snapshot_is_written_on_close_and_loaded_on_open(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(300):  # past SNAPSHOT_ON_CLOSE (256), never searched in this session
            tx.remember(f"m{i}", embedding=[float(i % 7), float(i % 3), 1.0])
    with capsule.open(p) as r:
        info = r.index_info()
        assert info["snapshot"] is not None and info["snapshot"]["vectors"] == 300 and info["doubt"] is None
    size = p.stat().st_size
    with capsule.open(p, "a") as cap:
        cap.search(vector=[1.0, 1.0, 1.0], k=3)  # loads the snapshot; nothing new to write
    assert p.stat().st_size == size


def test_configure_vectors_before_the_first_embedding(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        want = cap.configure_vectors(space="l2", M=12, seed=7)
        assert cap.vector_config() is None  # fixed with the first embedding, not before
        with cap.commit() as tx:
            tx.remember("x", embedding=[1.0, 0.0, 0.0])
        got = cap.vector_config()
        assert got is not None
        assert (got.space, got.M, got.seed, got.dim) == (want.space, 12, 7, 3)
        with pytest.raises(capsule.UsageError):
            cap.configure_vectors(space="ip")
        with pytest.raises(capsule.InvalidRecordError), cap.commit() as tx:
            tx.remember("wrong dimension", embedding=[1.0, 0.0])
    with capsule.open(p) as r:
        assert r.vector_config() == got


# --- transactions ------------------------------------------------------------------------


def test_an_exception_discards_the_batch_and_a_nested_commit_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        before = p.read_bytes()
        with pytest.raises(ValueError), cap.commit() as tx:
            tx.remember("discarded")
            raise ValueError("boom")
        assert p.read_bytes() == before and len(cap) == 0
        with pytest.raises(capsule.UsageError), cap.commit() as tx:
            tx.remember("discarded too")
            with cap.commit():
                pass
        with pytest.raises(capsule.UsageError), cap.commit() as tx:
            cap.checkpoint("inside", key=capsule.PrivateKey.from_seed(b"\x05" * 32))
        assert p.read_bytes() == before
        with cap.commit() as tx:  # the handle is still usable
            rid = tx.remember("kept")
        assert tx.new_ids == [rid] and len(cap) == 1
        with cap.commit() as tx:
            tx.remember("kept", time=cap.get(rid).time)  # already in the file: nothing written
        assert tx.info is None and tx.new_ids == []


# --- the public surface -------------------------------------------------------------------


#: ``capsule.__all__`` of the flat package (commit 110e499).
FLAT_ALL = {
    "Action", "ActionFailed", "ActionState", "AgentLoop", "AlreadyExists", "Approval", "Capsule", "CapsuleError",
    "CapsuleNotFound", "CommitRow", "Constraint", "CorruptError", "DataError", "Decision", "Embedder", "Filter",
    "GenericRecord", "HashEmbedder", "Hit", "Identity", "InDoubt", "InvalidRecordError", "Keyset", "Locked",
    "LoopResult", "Memory", "NOT_DONE", "NonCanonicalError", "NotFound", "Note", "PackReport", "PrivateKey",
    "PublicKey", "ReadOnlyError", "SentenceTransformerEmbedder", "Step", "Summary", "Transaction",
    "UnsupportedError", "UsageError", "VectorParams", "VerifyReport", "WriterPoisoned", "create", "embedders",
    "fork", "generate_key", "get_embedder", "kinds", "load_private_key", "load_public_key", "open", "pack",
    "register_embedder", "register_kind", "save_private_key", "verify",
}
FLAT_CAPSULE = {
    "action", "actions", "all_ids", "build_index", "checkpoint", "checkpoints", "close", "closed", "commit",
    "commit_count", "commit_of", "configure_vectors", "file_id", "find_checkpoint", "format_version", "get",
    "index_info", "keyset", "keysets", "kinds", "log", "records", "refresh", "resolve", "resolve_action", "root",
    "rotate_keys", "run_once", "save_index", "search", "size", "state", "state_root", "summary", "tasks",
    "vector_config", "view",
}
FLAT_TRANSACTION = {"approve", "checkpoint", "constrain", "decide", "note", "put", "put_value", "remember",
                    "set_identity"}


def test_the_public_surface_is_kept(tmp_path: Path) -> None:
    assert not FLAT_ALL - set(capsule.__all__)
    assert all(hasattr(capsule, name) for name in FLAT_ALL)
    assert not FLAT_CAPSULE - set(dir(capsule.Capsule))
    assert not FLAT_TRANSACTION - set(dir(capsule.Transaction))
    clock = Ticks()
    p = tmp_path / "a.capsule"
    with capsule.create(p, clock=clock) as cap:
        # plain attributes of the flat handle, still readable with the same values
        assert (cap.path, cap.mode, cap.clock, cap.close_error) == (p, "a", clock, None)
    with capsule.open(p) as r:
        assert (r.path, r.mode) == (p, "r")


def test_path_mode_and_clock_stay_plain_settable_attributes(tmp_path: Path) -> None:
    """Before the facade these were plain attributes; a caller may swap the clock."""
    with capsule.create(tmp_path / "c.capsule", clock=lambda: 5 * 10**18) as cap:
        cap.clock = lambda: 7 * 10**18
        with cap.commit() as tx:
            rid = tx.remember("timed by the new clock")
        assert cap.get(rid).time == 7 * 10**18
