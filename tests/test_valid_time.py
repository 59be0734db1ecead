"""Two clocks (issue #10, spec 7.1 and 13.6): ``valid_from`` / ``valid_to`` on memories and
the valid-time view (``valid_at``) of ``state``, ``search`` and ``records``.

- The fields: int ns, omitted when absent, ``valid_from < valid_to``; a reader refuses a
  spelled-out nil, another type or an empty window, on the exact and the fast paths alike;
  a memory without them encodes as before (the golden vectors hold it too).
- The fast paths (bulk JSON ingest, the state fold's frame decoder and its per-record
  decoder) give the reference's bytes and state with the fields present.
- The view against a brute-force model: random windows, ttls, supersessions (world
  changes and corrections), forgets and redactions, every T and every commit (``at``).
- Search keeps exactly k results when the view hides most candidates.
- The CLI: JSONL with ISO-8601 bounds, ``state`` / ``search`` / ``records --valid-at``, in
  a subprocess; a bad ``--valid-at`` is one line and writes nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import capsule
from capsule.core.errors import DataError, InvalidRecordError, UsageError
from capsule.format import canonical as canon
from capsule.format.bulk import _reference, memory_from_dict, memory_from_json
from capsule.format.records import Memory, decode_record, record_id
from capsule.state.fold import fold, fold_store
from capsule.state.memframe import memory_frame

S = 1_000_000_000
OPEN = 1 << 64


def _make(tmp_path: Path, name: str = "v.capsule") -> capsule.Capsule:
    t = iter(range(10**6))
    return capsule.create(tmp_path / name, clock=lambda: 10**12 + next(t))


# --- the fields ---------------------------------------------------------------------------


def test_fields_round_trip_and_are_omitted_when_absent(tmp_path: Path) -> None:
    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            a = tx.remember("the CEO is alice", valid_from="2020-01-01T00:00:00Z", valid_to=1640995200 * S)
            b = tx.remember("plain")
        m = cap.get(a)
        assert (m.valid_from, m.valid_to) == (1577836800 * S, 1640995200 * S)
        assert m.to_value()["valid_from"] == 1577836800 * S and "valid_from" not in cap.get(b).to_value()
        assert set(Memory(text="x", time=5).to_value()) == {"kind", "text", "time"}  # as before 1.3


@pytest.mark.parametrize("bad", [
    {"valid_from": None}, {"valid_to": None}, {"valid_from": 1.0}, {"valid_from": True}, {"valid_to": "5"},
    {"valid_from": -1}, {"valid_to": 1 << 63}, {"valid_from": 5, "valid_to": 5}, {"valid_from": 6, "valid_to": 5},
])
def test_a_reader_refuses_a_bad_window_on_every_path(bad: dict[str, Any]) -> None:
    value = {"kind": "memory", "text": "x", "time": 1, **bad}
    data = canon.pack(value)
    with pytest.raises(DataError):
        decode_record(canon.decode(data), record_id("memory", data))
    # the state fold's frame decoder does not take it (the exact way then raises)
    assert memory_frame(canon.pack([value]), 0, 0, lambda t: str(t), []) is None


@pytest.mark.parametrize("fields", [{"valid_from": 5, "valid_to": 5}, {"valid_from": 9, "valid_to": 3},
                                    {"valid_from": -1}, {"valid_to": True}, {"valid_from": "yesterday"}])
def test_writers_refuse_a_bad_window(tmp_path: Path, fields: dict[str, Any]) -> None:
    with _make(tmp_path) as cap:
        with pytest.raises(InvalidRecordError), cap.commit() as tx:
            tx.remember("x", **fields)
        with pytest.raises(InvalidRecordError), cap.commit() as tx:
            tx.put_value({"text": "x", **fields})
        assert len(cap) == 0


def test_bulk_ingest_gives_the_reference_bytes_with_the_fields() -> None:
    rng = random.Random(7)
    for _ in range(400):
        d: dict[str, Any] = {"text": rng.choice(["a", "b c", "é"]), "time": rng.randrange(10**12)}
        for name in ("valid_from", "valid_to", "ttl"):
            if rng.random() < 0.6:
                d[name] = rng.choice([0, 1, rng.randrange(1 << 62), (1 << 63) - 1, -1, 1 << 63, 1.0, "x"])
        if rng.random() < 0.3:
            d["tags"] = ["t", "a"]
        try:
            want = _reference(dict(d), 0, None)[1]
        except DataError:
            want = None
        for fast in (memory_from_dict(dict(d), 0), memory_from_json(json.dumps(d).encode(), 0)):
            assert fast is None or fast[0] == want, d


def test_jsonl_takes_iso_bounds_as_time_does(tmp_path: Path) -> None:
    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            [rid] = tx.put_many([b'{"text": "x", "valid_from": "2021-01-01", "valid_to": 1.7e18}'])
        m = cap.get(rid)
        assert (m.valid_from, m.valid_to) == (1609459200 * S, 1_700_000_000 * S)


def test_fast_and_slow_folds_agree_with_the_fields(tmp_path: Path) -> None:
    with _make(tmp_path) as cap:
        with cap.commit() as tx:  # a frame of plain memories: the frame decoder
            for i in range(50):
                tx.remember(f"m{i}", valid_from=i * S if i % 2 else None, valid_to=(i + 5) * S if i % 3 else None,
                            ttl=S if i % 7 == 0 else None, tags=["a"] if i % 5 == 0 else ())
        with cap.commit() as tx:  # with another kind: the per-record decoder
            tx.note("a note")
            tx.remember("n", valid_from=3, meta={"k": 1.5})
            tx.remember("o", valid_to=4, embedding=[1.0, 0.0])
        slow = fold(cap.records())
        fast = fold_store(cap._store)
        assert fast.to_dict() == slow.to_dict()
        assert fast.to_json() == slow.to_json()
        working = fast.to_dict()["memories"]["working"]
        assert working[1]["valid_from"] == "1970-01-01T00:00:01Z" and working[1]["valid_to"] == "1970-01-01T00:00:06Z"
        # a valid_at view folds the same way whichever decoder read the frame
        assert [m["id"] for m in cap.state(valid_at=4 * S).to_dict()["memories"]["working"]] == [
            r.id for r in cap.records("memory") if _own_window(r)[0] <= 4 * S < _own_window(r)[1]]


def test_a_file_with_the_fields_verifies_and_reopens_identically(tmp_path: Path) -> None:
    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            old = tx.remember("the CEO is alice", valid_from=10 * S, embedding=[1.0, 0.0])
            tx.remember("the CFO is dan", valid_to=40 * S, ttl=5 * S)
        with cap.commit() as tx:
            tx.supersede(old, "the CEO is carol", valid_from=30 * S)
        doc, view = cap.state().to_json(), cap.state(valid_at=20 * S).to_json()
        recs = [r.to_dict() for r in cap.records()]
    rep = capsule.verify(tmp_path / "v.capsule")
    assert rep.ok, rep
    with capsule.open(tmp_path / "v.capsule") as cap:
        assert cap.state().to_json() == doc and cap.state(valid_at=20 * S).to_json() == view
        assert [r.to_dict() for r in cap.records()] == recs


# --- the view against a model -------------------------------------------------------------


def _own_window(m: Memory) -> tuple[int, int]:
    lo = m.valid_from or 0
    hi = OPEN if m.valid_to is None else m.valid_to
    if m.ttl is not None:
        hi = min(hi, m.time + m.ttl)
    return lo, hi


def _model(cap: capsule.Capsule, t: int) -> set[str]:
    """13.6 by brute force: which memory ids the view at ``t`` holds."""
    mems = {r.id: r for r in cap._store.records("memory")}
    dead: set[str] = set()
    redacted: set[str] = set()
    last_drop: dict[str, Any] = {}
    for r in cap._store.records("revert"):
        for x in r.drop:
            last_drop[x.hex()] = r
        dead |= {x.hex() for x in r.drop}
        if r.op == "redact":
            redacted |= {x.hex() for x in r.drop}
        dead -= {x.hex() for x in r.restore} - redacted
    out = set()
    for rid, m in mems.items():
        lo, hi = _own_window(m)
        if rid in dead:
            ev = last_drop[rid]
            if rid in redacted or ev.op != "supersede":
                continue
            starts = [mems[b.hex()].valid_from if b.hex() in mems else None for b in ev.by]
            if None in starts:
                continue  # a correction
            hi = min(hi, *starts)
        if lo <= t < hi:
            out.add(rid)
    return out


def _views(cap: capsule.Capsule, t: int) -> dict[str, set[str]]:
    st = cap.state(valid_at=t).to_dict()
    return {
        "state": {m["id"] for tier in st["memories"].values() for m in tier},
        "records": {r.id for r in cap.records("memory", valid_at=t)},
        "list": {h.id for h in cap.search(None, k=10_000, kind="memory", valid_at=t)},
        "lexical": {h.id for h in cap.search("fact", mode="lexical", k=10_000, valid_at=t)},
        "vector": {h.id for h in cap.search(vector=[1.0, 0.5], mode="vector", k=10_000, ef=2000, valid_at=t)},
    }


@pytest.mark.parametrize("seed", range(1, 9))
def test_the_view_matches_a_brute_force_model(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    times = [rng.randrange(0, 100) * S for _ in range(12)] + [0, 50 * S, 99 * S]

    def bounds() -> dict[str, Any]:
        kw: dict[str, Any] = {}
        lo = rng.choice([None, rng.randrange(0, 80) * S])
        hi = rng.choice([None, rng.randrange(1, 100) * S])
        if lo is not None:
            kw["valid_from"] = lo
        if hi is not None and (lo is None or hi > lo):
            kw["valid_to"] = hi
        return kw

    with _make(tmp_path) as cap:
        live: list[str] = []
        commits = []
        for c in range(8):
            with cap.commit() as tx:
                for _ in range(rng.randrange(1, 6)):
                    kw = bounds()
                    if rng.random() < 0.2:
                        kw["ttl"], kw["time"] = rng.randrange(1, 60) * S, rng.randrange(0, 60) * S
                    live.append(tx.remember(f"fact {rng.randrange(10**9)}", embedding=[rng.random(), rng.random()],
                                            **kw))
            if c >= 1:
                with cap.commit() as tx:
                    for _ in range(rng.randrange(0, 3)):
                        if not live:
                            break
                        old = live.pop(rng.randrange(len(live)))
                        op = rng.random()
                        if op < 0.55:  # a world change or a correction
                            kw = {"valid_from": rng.randrange(0, 100) * S} if rng.random() < 0.7 else {}
                            live.append(tx.supersede(old, f"fact {rng.randrange(10**9)}",
                                                     embedding=[rng.random(), 1.0], **kw))
                        elif op < 0.85:
                            tx.forget(old)
                        else:
                            tx.redact(old)
            commits.append(cap.log()[-1].seq)
        for t in times:
            want = _model(cap, t)
            for name, got in _views(cap, t).items():
                assert got == want, (seed, t, name)
        # `at` picks the view, `valid_at` filters within it; a record redacted later is left
        # out of the comparison (7.7.1: a view from before the redaction never shows its payload)
        red = {x.hex() for r in cap._store.records("revert") if r.op == "redact" for x in r.drop}
        for seq in commits[::3]:
            with cap.view(seq) as then:
                for t in times[::4]:
                    want = _model(then, t) - red
                    for name, got in _views(then, t).items():
                        assert got - red == want, (seed, seq, t, name)


def test_a_supersede_without_valid_from_is_a_correction(tmp_path: Path) -> None:
    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            a = tx.remember("the CEO is alice", valid_from=10 * S)
            b = tx.remember("the sky is green")
        with cap.commit() as tx:
            c = tx.supersede(a, "the CEO is carol", valid_from=30 * S)  # a world change at 30
            d = tx.supersede(b, "the sky is blue")  # a correction: b was never true
        ids = {t: {m["id"] for m in cap.state(valid_at=t * S).to_dict()["memories"]["working"]} for t in (5, 20, 40)}
        assert ids == {5: {d}, 20: {a, d}, 40: {c, d}}
        # the commit's state and root are unchanged by the view
        assert cap.state(valid_at=20 * S).root == cap.state().root
        assert cap.state(valid_at=20 * S).to_dict()["valid_at"] == "1970-01-01T00:00:20Z"
        assert "valid_at" not in cap.state().to_dict()


def test_ttl_ends_the_window_and_other_kinds_pass(tmp_path: Path) -> None:
    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            m = tx.remember("temporary", time=10 * S, ttl=5 * S)
            n = tx.note("a note")
        assert {r.id for r in cap.records(valid_at=12 * S)} >= {m, n}
        assert {r.id for r in cap.records(valid_at=15 * S)} == {n}
        assert [h.id for h in cap.search("temporary", mode="lexical", valid_at=14 * S)] == [m]
        assert cap.search("temporary", mode="lexical", valid_at=15 * S) == []
        with pytest.raises(UsageError):
            cap.state(valid_at="not a time")


def test_search_keeps_k_results_when_the_view_hides_most(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            kept = set()
            for i in range(3000):
                true_at_5 = i % 100 == 0
                kw = {} if true_at_5 else {"valid_from": 10 * S}
                rid = tx.remember(f"fact number {i}", embedding=rng.normal(size=8).tolist(), **kw)
                if true_at_5:
                    kept.add(rid)
        for mode, q in (("vector", None), ("lexical", "fact number"), ("hybrid", "fact number")):
            hits = cap.search(q, vector=rng.normal(size=8).tolist() if mode != "lexical" else None, mode=mode, k=10,
                              valid_at=5 * S)
            assert len(hits) == 10 and {h.id for h in hits} <= kept, mode
        # and the vector results are the exact top 10 of the memories the view holds
        q = rng.normal(size=8)
        vecs = {r.id: r.embedding / np.linalg.norm(r.embedding) for r in cap.records("memory") if r.id in kept}
        best = sorted(vecs, key=lambda r: (-float(vecs[r] @ (q / np.linalg.norm(q))), r))[:10]
        got = [h.id for h in cap.search(vector=q.tolist(), mode="vector", k=10, valid_at=5 * S)]
        assert got == best


# --- the CLI --------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(Path(sys.executable).with_name("capsule")), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_jsonl_and_valid_at_views(tmp_path: Path) -> None:
    path = str(tmp_path / "c.capsule")
    src = tmp_path / "facts.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in [
        {"text": "the CEO is alice", "valid_from": "2020-01-01T00:00:00Z", "valid_to": "2022-01-01"},
        {"text": "the CEO is bob", "valid_from": 1640995200 * S},
        {"text": "the office is in paris"},
    ]) + "\n")
    assert _cli("init", path).returncode == 0
    r = _cli("put", path, "--jsonl", str(src))
    assert r.returncode == 0, r.stderr

    r = _cli("state", path, "--valid-at", "2021-06-01", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid_at"] == "2021-06-01T00:00:00Z"
    assert sorted(m["text"] for m in doc["memories"]["working"]) == ["the CEO is alice", "the office is in paris"]
    assert doc["memories"]["working"][0]["valid_to"] == "2022-01-01T00:00:00Z"
    assert "valid_at" not in json.loads(_cli("state", path, "--json").stdout)

    r = _cli("search", path, "CEO", "--valid-at", "2023-01-01T00:00:00Z", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["text"] for h in hits] == ["the CEO is bob"] and hits[0]["valid_at"] == "2023-01-01T00:00:00Z"

    r = _cli("records", path, "--valid-at", "2019-01-01", "--json")
    assert r.returncode == 0, r.stderr
    assert [h["text"] for h in json.loads(r.stdout)] == ["the office is in paris"]
    r = _cli("records", path, "--valid-at", "2019-01-01")
    assert "paris" in r.stdout and "CEO" not in r.stdout

    # `--at` picks what was known, `--valid-at` what was true: at the first commit nothing was known
    r = _cli("state", path, "--at", "0", "--valid-at", "2021-06-01", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["memories"]["working"] == []

    before = Path(path).read_bytes()
    for cmd in ("state", "search", "records"):
        r = _cli(cmd, path, *(["x"] if cmd == "search" else []), "--valid-at", "last tuesday")
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--valid-at" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert Path(path).read_bytes() == before


def test_the_view_follows_a_growing_file_and_both_readers_agree(tmp_path: Path) -> None:
    """A searcher reads the view's facts once and then only the new frames; the bulk reader
    of those facts and the record-by-record one find the same."""
    from capsule.state.validtime import ValidTime

    with _make(tmp_path) as cap:
        with cap.commit() as tx:
            a = tx.remember("the CEO is alice", valid_from=10 * S, ttl=10**6 * S, time=S)
            tx.remember("the CFO is dan", valid_to=40 * S, embedding=[1.0, 0.0])
            tx.note("a note with valid_from in its text")
        assert [h.id for h in cap.search("CEO", mode="lexical", valid_at=50 * S)] == [a]
        with cap.commit() as tx:
            c = tx.supersede(a, "the CEO is carol", valid_from=30 * S)
        assert [h.id for h in cap.search("CEO", mode="lexical", valid_at=50 * S)] == [c]
        assert [h.id for h in cap.search("CEO", mode="lexical", valid_at=20 * S)] == [a]
        bulk = ValidTime().update(cap._store)

        class Exact(ValidTime):
            def _bulk(self, raw: bytes) -> bool:
                return False

        exact = Exact().update(cap._store)
        for name in ("bounds", "starts", "dead", "redacted", "superseded", "end"):
            assert getattr(bulk, name) == getattr(exact, name), name
        assert bulk.bounds and bulk.superseded


@pytest.mark.parametrize("window", [(None, 5), (5, None), (5, 6), (0, (1 << 63) - 1), (5, 5), (6, 5)])
@pytest.mark.parametrize("other", [False, True])
def test_verify_bulk_takes_a_good_window_and_never_a_bad_one(window: tuple[int | None, int | None],
                                                             other: bool) -> None:
    """verify's bulk frame check (verifier/fast.py) reads the fields in C; it accepts a frame
    only when the record-by-record walk does, with the same ids (an empty window: neither)."""
    from capsule.format.commit import encode_records_payload
    from capsule.verifier import fast

    from .test_verify_fast import reference_frame

    vf, vt = window
    mem = {"kind": "memory", "text": "x", "time": 1, **({"valid_from": vf} if vf is not None else {}),
           **({"valid_to": vt} if vt is not None else {})}
    recs = [canon.pack(mem), canon.pack({"kind": "memory", "text": "y", "time": 2})]
    if other:  # a frame with another kind takes the per-record bulk check
        recs.append(canon.pack({"kind": "note", "text": "z", "time": 3}))
    raw = encode_records_payload(recs)
    got, want = fast.check_frame(raw), reference_frame(raw)
    good = vf is None or vt is None or vf < vt
    assert (want is not None) == good
    assert (got is not None) == good  # a good window no longer sends the frame to the walk
    if got is not None:
        assert want is not None and got.ids == b"".join(r for _, r in want)
