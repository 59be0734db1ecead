"""Regressions from the adversarial re-audit of issue 16 (each failed on the code before its fix)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
import capsule.run.journal as journal_mod
from capsule.run.journal_blob import ActionState, state_bytes


def _lying_writer(monkeypatch: pytest.MonkeyPatch, key: str, value: object) -> None:
    """A writer whose journal head gives ``key`` a value its records never gave (18.1)."""

    def lying(st: ActionState) -> bytes:
        if st.key == key:
            st = st.copy()
            st.value = value
        return state_bytes(st)

    monkeypatch.setattr(journal_mod, "state_bytes", lying)


def test_verify_refuses_a_journal_head_that_is_not_the_fold_of_its_records(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # 18.2: a reader trusts a head whose count adds up, so a lying head makes run_once skip the effect;
    # verification must compare the head with the fold of the action records (it checked 3.4 only)
    p = tmp_path / "j.capsule"
    cap = capsule.create(p)
    cap.run_once("pay", lambda: "real")
    cap.run_once("other", lambda: 1)
    with monkeypatch.context() as m:
        _lying_writer(m, "pay", "FORGED")
        cap._write_commit([], force_index=True)  # an INDEX with a journal head
    cap.close()
    with capsule.open(p) as r:  # what a reader believes: the head is used as it is
        assert {st.key: st.value for st in r.actions()}["pay"] == "FORGED"
    rep = capsule.verify(p)
    assert not rep.ok
    assert rep.first_error is not None and rep.first_error["check"] == "journal"


def test_verify_accepts_journal_heads_written_by_the_writer(tmp_path: Path) -> None:
    # many heads, merged segments, failures and retries: every head is the fold it claims
    p = tmp_path / "j.capsule"
    cap = capsule.create(p)
    for r in range(12):
        for i in range(40):
            with contextlib.suppress(ZeroDivisionError, capsule.ActionFailed):
                cap.run_once(f"k{(r * 37 + i) % 300}", (lambda: 1 / 0) if i % 13 == 0 else (lambda r=r: [r, b"x"]))
        cap._write_commit([], force_index=True)
    cap.close()
    rep = capsule.verify(p, strict=False)
    assert rep.ok, rep.first_error


def test_a_long_id_prefix_reads_only_the_entries_whose_id_matches(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # 9.1, 17.4: a hostile table whose entries all share one 8-byte prefix made `get FILE <17+ digits>`
    # read a record (a whole frame when uncached) per entry before anything was hashed: 74 s for an
    # 18 MB file. Only entries whose listed id matches are read, and one that names another record
    # is reported.
    import numpy as np

    import capsule.format.writer as writer
    from capsule.format.store import Store

    real = writer._tables

    def forged(emit, ids, frames, slots, cap):  # type: ignore[no-untyped-def]
        n = len(ids)
        fake = np.array([b"\xab" * 8 + i.to_bytes(24, "big") for i in range(n)], dtype="S32")
        return real(emit, fake, frames, slots, cap)  # as many entries as records: open's counts agree

    p = tmp_path / "t.capsule"
    cap = capsule.create(p)
    with monkeypatch.context() as m:
        m.setattr(writer, "_tables", forged)
        with cap.commit() as tx:
            tx.put_many({"text": f"record {i}"} for i in range(300))
        cap._write_commit([], force_index=True)
    cap.close()
    reads: list[int] = []
    real_id_at = Store._id_at
    monkeypatch.setattr(Store, "_id_at", lambda self, *a: reads.append(1) or real_id_at(self, *a))
    with capsule.open(p) as r, pytest.raises(capsule.CorruptError) as e:
        r.get("ab" * 8 + "00000")
    assert e.value.check == "index-location"
    assert len(reads) <= 2


def test_verify_refuses_a_vector_snapshot_entry_moved_away_from_its_memory(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # 16.3: a search checks only the entries it returns, so a snapshot whose stored vector for the
    # best match points elsewhere (ids, times, tags and graph honest) made search leave that memory
    # out without a doubt; verification compared the ids only.
    import numpy as np

    from capsule.search.vindex import VectorIndex

    from .vindex_forge import layout

    rng = np.random.default_rng(1)
    p = tmp_path / "v.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        for i in range(50):
            tx.remember(f"m{i}", embedding=rng.normal(size=8).tolist())
        target = tx.remember("the answer", embedding=[1, 0, 0, 0, 0, 0, 0, 0])
    real = VectorIndex.encode_parts

    def lying(self: VectorIndex) -> list[bytes]:
        blob = bytearray(b"".join(real(self)))
        lay = layout(blob)
        label = next(i for i in range(lay.n) if self.ids[i] == bytes.fromhex(target))
        at = lay.vector(label)
        blob[at : at + 4 * lay.dim] = np.array([-1, 0, 0, 0, 0, 0, 0, 0], "<f4").tobytes()
        return [bytes(blob)]

    with monkeypatch.context() as m:
        m.setattr(VectorIndex, "encode_parts", lying)  # what the writer writes
        cap.build_index()
        assert cap.save_index()
    cap.close()
    with capsule.open(p) as r:  # what a reader gets: the answer is missing, and no doubt is said
        hits = r.search(vector=[1, 0, 0, 0, 0, 0, 0, 0], mode="vector", k=3)
        assert target not in [h.id for h in hits] and r.index_info()["doubt"] is None
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "vindex"


def test_verify_accepts_vector_snapshots_the_writer_wrote(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(2)
    p = tmp_path / "v.capsule"
    cap = capsule.create(p)
    for r in range(3):
        with cap.commit() as tx:
            tx.put_many({"text": f"r{r} {i}", "embedding": rng.normal(size=16).tolist(), "tags": [f"t{i % 3}"],
                         "tier": "validated" if i % 2 else "working", **({"ttl": 10**12} if i % 5 == 0 else {})}
                        for i in range(300))
        cap.build_index()
        assert cap.save_index()
    cap.close()
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("how", ["jsonl", "json-body", "pack"])
def test_a_json_int_of_thousands_of_digits_is_an_input_error_not_a_crash(tmp_path: Path, how: str) -> None:
    # Python refuses to convert an int of more than 4300 digits with a ValueError that is not a
    # JSONDecodeError: put --jsonl, --json-body and pack exited 70 ("a bug in capsule")
    p = tmp_path / "c.capsule"
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "meta": {"k": ' + "9" * 5000 + "}}\n")
    if how == "pack":
        r = _cli("pack", str(src), "-o", str(p))
    else:
        assert _cli("init", str(p)).returncode == 0
        before = p.read_bytes()
        r = (_cli("put", str(p), "--jsonl", str(src)) if how == "jsonl"
             else _cli("put", str(p), "--kind", "note", "--json-body", '{"text": "a", "time": ' + "9" * 5000 + "}"))
        assert p.read_bytes() == before
    assert r.returncode == 1, r.stderr
    assert "invalid JSON" in r.stderr and "internal error" not in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("number", ["9" * 5000, "9" * 400])
def test_a_query_vector_with_a_huge_int_is_a_usage_error(tmp_path: Path, number: str) -> None:
    p = tmp_path / "c.capsule"
    assert _cli("init", str(p)).returncode == 0
    q = tmp_path / "q.json"
    q.write_text(f"[{number}, 1]")
    r = _cli("search", str(p), "--vector", str(q), "--mode", "vector")
    assert r.returncode == 2 and "internal error" not in r.stderr and r.stderr.startswith("capsule: error: --vector")


def test_a_query_vector_past_float32_is_refused(tmp_path: Path) -> None:
    """Re-audit: [1e300]*8 overflowed the cosine norm (a RuntimeWarning and an arbitrary ranking)."""
    import warnings

    import numpy as np

    p = tmp_path / "q.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(4):
            tx.remember(f"v {i}", embedding=np.full(8, i + 1, np.float32))
    with capsule.open(p) as cap, warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(capsule.UsageError, match="float32"):
            cap.search(vector=[1e300] * 8, mode="vector")
        assert len(cap.search(vector=[3e38] * 8, mode="vector", k=2)) == 2  # the edge still works
