"""Golden vectors (spec/vectors): committed bytes decode to the expected ids and
roots, and a reproducible rebuild gives identical bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

import capsule

VEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
EXPECTED = json.loads((VEC / "vectors.json").read_text())


def _load_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_vectors", VEC / "make_vectors.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_vector_decodes(name: str) -> None:
    want = EXPECTED[name]
    path = VEC / f"{name}.capsule"
    builder = _load_builder()
    # 10: the encrypted vector opens with k1, whose seed the vector names
    key = capsule.PrivateKey.from_seed(bytes.fromhex(want["identity_seed"])) if "identity_seed" in want else None
    got = builder._ids_roots(path, identity=key)
    assert got == {k: v for k, v in want.items() if k in got}
    rep = capsule.verify(path, identity=key)
    assert rep.ok and rep.contents_checked, rep.first_error
    assert (rep.torn_tail > 0) == (name == "torn")


def test_rebuild_is_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # build() sets SOURCE_DATE_EPOCH itself; setenv first so that monkeypatch removes it again
    # afterwards (a later test's two "unrelated" files would otherwise get one file id)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    builder = _load_builder()
    docs = builder.build(tmp_path / "elsewhere")
    assert docs == EXPECTED
    for f in sorted(VEC.glob("*.capsule")):
        assert (tmp_path / "elsewhere" / f.name).read_bytes() == f.read_bytes(), f.name


def test_torn_vector_reads_committed_prefix_without_writing() -> None:
    path = VEC / "torn.capsule"
    before = path.read_bytes()
    with capsule.open(path) as cap:
        assert cap.size == EXPECTED["torn"]["committed_bytes"]
        assert cap.state_root == EXPECTED["memories"]["state_root"]
    assert path.read_bytes() == before


def test_memory_vector_fields() -> None:
    with capsule.open(VEC / "memories.capsule") as cap:
        recs = {r.text: r for r in cap.records()}
    assert recs["deploys are frozen on Fridays"].tags == ("ops", "policy")
    assert "caf\u00e9 opens at 8" in recs  # stored NFC
    assert recs["scratch note"].tier == "scratch" and recs["scratch note"].source == "planner"
    emb = recs["vector memory"].embedding
    assert emb is not None and emb.tolist() == [0.25, 0.0, 1.0, -2.5]
    assert recs["validated fact"].tier == "validated"


def test_agent_vector_checkpoints_and_trust(tmp_path: Path) -> None:
    import capsule

    want = EXPECTED["agent"]
    path = VEC / "agent.capsule"
    builder = _load_builder()
    assert builder._checkpoints(path) == want["checkpoints"]
    assert builder._keyset(path) == want["keyset"]
    anchor = capsule.PublicKey.from_text(want["trust_key"])
    rep = capsule.verify(path, trust=anchor)
    assert rep.ok and rep.anchored and rep.checkpoints == 3, rep.first_error
    # 9.3: the close after the last checkpoint writes an INDEX commit (tables, no records):
    # it lies past the signed prefix but adds nothing to the state, so strict still passes
    assert rep.trusted_checkpoints == 3 and rep.unsigned["records"] == 0, rep.unsigned
    assert rep.unsigned["commits"] <= 1
    assert capsule.verify(path, trust=anchor, strict=True).ok
    # 14.7: an anchor may name the rotated keyset v2; then only checkpoints signed under v2 count
    later = capsule.verify(path, trust=want["keyset"])
    assert later.ok and later.trusted_checkpoints == 2, later.first_error
    assert later.signed_prefix == rep.signed_prefix
    assert capsule.verify(path, trust=capsule.generate_key().public_key).ok is False
    with capsule.open(path) as cap, capsule.open(path, at="day-1") as day1:
        assert cap.state_root == day1.state_root  # the rollback restored day-1's state
        assert cap.state().to_dict()["memories"] == day1.state().to_dict()["memories"]
    # 7.4 (issue 16, F10): the same records, but not the same verdict. k1 approved the rule
    # and published its key in an identity; at day-1 k1 is the keyset in force, at the end
    # the keyset was rotated to {k2, k3}: the signature still checks, nothing vouches for k1.
    # (Before, both showed `verified: true`, because an identity had published k1.)
    assert builder._approvals(path) == want["approvals"]
    assert [(a["signature_ok"], a["verified"]) for a in want["approvals"]["day-1"]] == [(True, True)]
    assert [(a["signature_ok"], a["verified"]) for a in want["approvals"]["last"]] == [(True, False)]


# --- 1.1: search, and the 1.0 vectors a 1.1 reader must still read (12.4) ----------

V10 = VEC / "v1.0"
EXPECTED_10 = json.loads((V10 / "vectors.json").read_text())
V11 = VEC / "v1.1"  # 12.6: the 1.1 vectors a 1.2 reader MUST read
EXPECTED_11 = json.loads((V11 / "vectors.json").read_text())
V12 = VEC / "v1.2"  # 12.7: the 1.2 vectors a 1.3 reader MUST read
EXPECTED_12 = json.loads((V12 / "vectors.json").read_text())
V13 = VEC / "v1.3"  # 12.8: the 1.3 vectors a 1.4 reader MUST read, and search as before
EXPECTED_13 = json.loads((V13 / "vectors.json").read_text())
OLDER = {"1.0": (V10, EXPECTED_10), "1.1": (V11, EXPECTED_11), "1.2": (V12, EXPECTED_12), "1.3": (V13, EXPECTED_13)}
OLD = [(v, n) for v, (_, docs) in OLDER.items() for n in sorted(docs)]


@pytest.mark.parametrize(("version", "name"), OLD)
def test_older_vectors_still_read(version: str, name: str) -> None:
    folder, docs = OLDER[version]
    want = docs[name]
    path = folder / f"{name}.capsule"
    before = path.read_bytes()
    assert hashlib.sha256(before).hexdigest() == want["sha256"]
    with capsule.open(path) as cap:
        assert cap.format_version == version
        assert cap.state_root == want["state_root"]
        assert [row.root for row in cap.log()] == want["commit_roots"]
        ids = [r.id for r in cap.records()]
        if "records" in want:
            assert ids == want["records"]
        else:
            assert len(ids) == want["record_count"]
            assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == want["records_sha256"]
        # every record is found through the 52-byte tables and the in-memory map (a redacted
        # one, 7.7.1, is found and refused)
        for i in ids:
            assert i in cap
            try:
                assert cap.get(i).id == i
            except capsule.Redacted:
                assert version >= "1.3"
        assert sorted(bytes.fromhex(i) for i in ids) == [bytes(x).ljust(32, b"\0") for x in cap.all_ids()]
        assert "00" * 32 not in cap
    rep = capsule.verify(path)
    assert rep.ok, rep.first_error
    assert rep.format_version == version
    assert path.read_bytes() == before


@pytest.mark.parametrize("version", ["1.1", "1.2", "1.3"])
def test_older_search_and_checkpoints_as_before(version: str) -> None:
    """12.6, 12.8: a file created before 1.4 ranks with tokenizer 1 and no window (16.4), so
    its searches give its own vector's results, to the bit."""
    folder, docs = OLDER[version]
    want = docs["search"]
    with capsule.open(folder / "search.capsule") as cap:
        assert cap.index_info()["snapshot"] == want["snapshot"]
        q = [1.0, 0.5, 0.0, 0.5]
        assert [[h.id, h.score] for h in cap.search(vector=q, k=3, mode="vector")] == want["vector_top3"]
        assert [[h.id, h.score] for h in cap.search("blue service", k=4, mode="lexical")] == want["lexical_blue"]
        assert [[h.id, h.score] for h in cap.search("red service", vector=q, k=4, mode="hybrid")] == want["hybrid"]
        assert cap.index_info()["doubt"] is None
    builder = _load_builder()
    assert builder._checkpoints(folder / "agent.capsule") == docs["agent"]["checkpoints"]
    anchor = capsule.PublicKey.from_text(docs["agent"]["trust_key"])
    rep = capsule.verify(folder / "agent.capsule", trust=anchor)
    assert rep.ok and rep.trusted_checkpoints == 3, rep.first_error


def test_search_vector_results() -> None:
    want = EXPECTED["search"]
    path = VEC / "search.capsule"
    with capsule.open(path) as cap:
        assert cap.index_info()["snapshot"] == want["snapshot"]
        q = [1.0, 0.5, 0.0, 0.5]
        got = [[h.id, h.score] for h in cap.search(vector=q, k=3, mode="vector")]
        assert got == want["vector_top3"]
        got = [[h.id, h.score] for h in cap.search(vector=q, k=5, mode="vector", tags=["t0"], tier="validated")]
        assert got == want["vector_t1_validated"]
        got = [[h.id, h.score] for h in cap.search("blue service", k=4, mode="lexical")]
        assert got == want["lexical_blue"]
        got = [[h.id, h.score] for h in cap.search("red service", vector=q, k=4, mode="hybrid")]
        assert got == want["hybrid"]
        # 1.4 (16.4.1): identifiers, accents, stems and the session window, each query as written
        for name in ("lexical_identifier", "lexical_window", "lexical_cpp"):
            assert [[h.id, h.score] for h in cap.search(**want["queries"][name])] == want[name], name
        # the snapshot was used, and the memory after it was inserted on open (16.3)
        assert cap.index_info()["doubt"] is None
        assert cap.index_info()["indexed"] == want["snapshot"]["vectors"] + 1


def test_hash_embedder_is_pinned() -> None:
    import hashlib

    want = EXPECTED["search"]["hash_embedder"]
    vec = capsule.get_embedder("hash").embed(["Deploys freeze on Fridays.", ""])
    assert vec.shape[1] == want["dim"]
    assert hashlib.sha256(vec.tobytes()).hexdigest() == want["sha256"]


# --- 1.3: lifecycles, two clocks and compaction (7.7.1, 13.6, 15.1, 15.2) ----------------

def test_lifecycle_vector_live_set_valid_time_and_redaction() -> None:
    want = EXPECTED["lifecycle"]
    ids = want["ids"]
    with capsule.open(VEC / "lifecycle.capsule") as cap:
        assert sorted(m["id"] for t in cap.state().memories.values() for m in t) == want["live"]
        for name, t in want["valid_at_times"].items():
            got = sorted(m["id"] for tier in cap.state(valid_at=t).memories.values() for m in tier)
            assert got == want["valid_at"][name], name
        with pytest.raises(capsule.Redacted):
            cap.get(ids["secret"])
        assert cap.get(ids["promoted"]).tier == "validated"
        assert ids["secret"] in want["records"]  # stored until a compaction purges it (7.7.1)
    rep = capsule.verify(VEC / "lifecycle.capsule", trust=capsule.PublicKey.from_text(want["trust_key"]))
    assert rep.ok and rep.trusted_checkpoints == 1, rep.first_error


@pytest.mark.parametrize("keep", ["history", "live"])
def test_compacted_vectors_prove_their_lineage(keep: str) -> None:
    from capsule.questions.diff_files import lineage_of

    want = EXPECTED[f"compacted-{keep}"]
    path = VEC / f"compacted-{keep}.capsule"
    builder = _load_builder()
    with capsule.open(path) as cap:
        assert builder._lineage(lineage_of(cap)) == want["lineage"]
        assert cap.state_root == EXPECTED["lifecycle"]["state_root"]  # the live state is kept whole
    secret = EXPECTED["lifecycle"]["ids"]["secret"]
    assert secret not in want["records"] and want["lineage"]["dropped"] >= 1  # purged (15.1)
    trust = capsule.PublicKey.from_text(EXPECTED["lifecycle"]["trust_key"])
    rep = capsule.verify(path, parent=VEC / "lifecycle.capsule", trust=trust)
    assert rep.ok and rep.trusted_checkpoints == want["trusted_checkpoints"] == 1, rep.first_error
    assert not capsule.verify(path, parent=VEC / "agent.capsule").ok  # an unrelated parent
