"""CapsuleSaver: LangGraph's own conformance suite, and what a capsule adds (reopen, deletion
through lifecycle events, verify, readers, bad files, the index). The saver's records are of the
application kinds ``langgraph.checkpoint`` / ``langgraph.writes`` (spec 12.3): the agent's
memories, search and listings never see them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langchain_core.runnables import RunnableConfig  # noqa: E402
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint  # noqa: E402
from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES  # noqa: E402

import capsule  # noqa: E402
from capsule.format.records import GenericRecord  # noqa: E402
from capsule.format.store import Store  # noqa: E402
from capsule.integrations.langgraph import CapsuleSaver  # noqa: E402
from capsule.integrations.langgraph import _saver_records as records  # noqa: E402

KINDS = ("langgraph.checkpoint", "langgraph.writes")

CLI = Path(sys.executable).parent / "capsule"


def _cfg(thread: str, ns: str = "", cid: str | None = None) -> RunnableConfig:
    c: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if cid is not None:
        c["checkpoint_id"] = cid
    return {"configurable": c}


def _fill(saver: CapsuleSaver, threads: list[str], n: int, ns: str = "") -> dict[str, list[str]]:
    """n checkpoints per thread, each with a regular and a special write; returns the ids."""
    ids: dict[str, list[str]] = {}
    for t in threads:
        cfg = _cfg(t, ns)
        for i in range(n):
            ck = empty_checkpoint()
            ck["channel_values"] = {"msgs": [f"{t} says {j}" for j in range(i + 1)], "raw": bytes([i % 256]) * 3}
            ck["channel_versions"] = {"msgs": i + 1, "raw": i + 1}
            cfg = saver.put(cfg, ck, {"source": "loop", "step": i, "run_id": f"run-{t}-{i // 2}"},
                            {"msgs": i + 1})
            saver.put_writes(cfg, [("msgs", f"w{i}"), ("__error__", "first")], "task-a", "path/a")
            saver.put_writes(cfg, [("msgs", "dup"), ("__error__", "second")], "task-a", "path/a")
            ids.setdefault(t, []).append(cfg["configurable"]["checkpoint_id"])
    return ids


def _dump(tups: Iterator[CheckpointTuple] | list[CheckpointTuple]) -> list[Any]:
    return [(t.config, t.parent_config, t.checkpoint, t.metadata, t.pending_writes) for t in tups]


def _live(path: Path) -> dict[str, int]:
    """How many live records of each saver kind the file holds (the public read, 13.1)."""
    with capsule.open(path) as cap:
        return {k: sum(1 for _ in cap.live(k)) for k in KINDS}


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


# --- LangGraph's own suite ---------------------------------------------------------------------
def test_the_official_conformance_suite_passes_every_capability(tmp_path: Path) -> None:
    made: list[CapsuleSaver] = []

    @checkpointer_test(name="CapsuleSaver")
    async def factory() -> AsyncGenerator[CapsuleSaver, None]:
        saver = CapsuleSaver(tmp_path / f"suite-{len(made)}.capsule")
        made.append(saver)
        try:
            yield saver
        finally:
            saver.close()

    report = asyncio.run(validate(factory))
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    for name, res in report.results.items():
        assert res.detected, f"{name}: not detected"
        assert res.passed, f"{name}: {res.tests_failed} failed: {res.failures}"
        assert res.tests_passed > 0
    assert len(made) == len(ALL_CAPABILITIES)
    for saver in made:  # every suite's file is a sound capsule
        rep = capsule.verify(saver.path)
        assert rep.ok, rep.first_error


# --- reopen ---------------------------------------------------------------------------------------
def test_a_reopened_saver_gives_the_same_answers(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        ids = _fill(w, ["a", "b", "c"], 5)
        _fill(w, ["a"], 2, ns="child:1")
        w.copy_thread("b", "b2")
        w.put(_cfg("a", cid=ids["a"][1]), {**empty_checkpoint(), "id": ids["a"][1]}, {"source": "update", "step": 9},
              {})  # a second put of an existing id replaces it
        before = _dump(w.list(None))
        latest = {t: w.get_tuple(_cfg(t)) for t in ("a", "b", "c", "b2")}
        one = w.get_tuple(_cfg("c", cid=ids["c"][2]))
        filt = _dump(w.list(None, filter={"step": 3}))
        page = _dump(w.list(_cfg("a"), before=_cfg("a", cid=ids["a"][3]), limit=2))
    assert len(before) == 3 * 5 + 2 + 5
    t = latest["a"]
    assert t is not None and t.pending_writes == [("task-a", "__error__", "second"), ("task-a", "msgs", "w4")]
    for mode in ({}, {"read_only": True}):
        with CapsuleSaver(p, **mode) as r:  # type: ignore[arg-type]
            assert _dump(r.list(None)) == before
            assert {k: r.get_tuple(_cfg(k)) for k in latest} == latest
            assert r.get_tuple(_cfg("c", cid=ids["c"][2])) == one
            assert _dump(r.list(None, filter={"step": 3})) == filt
            assert _dump(r.list(_cfg("a"), before=_cfg("a", cid=ids["a"][3]), limit=2)) == page
    got = [t.metadata["source"] for t in CapsuleSaver(p, read_only=True).list(_cfg("a", cid=ids["a"][1]))]
    assert got == ["update"]


# --- deletion: lifecycle events, for good -------------------------------------------------------------
def test_deleted_checkpoints_stay_deleted_after_reopen_and_compaction(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        ids = _fill(w, ["gone", "pruned", "runs", "kept"], 4)
        _fill(w, ["gone"], 2, ns="child:x")
        doomed = [rec.id for k in KINDS for rec in w.capsule.live(k) if rec.value["thread_id"] == "gone"]
        assert len(doomed) == 6 * 3 and all(w.capsule.is_live(x) for x in doomed)
        w.delete_thread("gone")
        w.prune(["pruned"], strategy="keep_latest")
        w.delete_for_runs(["run-runs-0"])  # the first two checkpoints of "runs"
        w.delete_thread("never-existed")  # no-op, no commit
        expect = _dump(w.list(None))
        assert not any(w.capsule.is_live(x) for x in doomed)
    assert {t[0]["configurable"]["thread_id"] for t in expect} == {"pruned", "runs", "kept"}
    # each checkpoint is one langgraph.checkpoint record and two langgraph.writes records (the
    # duplicate put_writes call keeps only its special write); 6 + 3 + 2 checkpoints were forgotten
    assert _live(p) == {"langgraph.checkpoint": 18 - 11, "langgraph.writes": 36 - 22}
    with capsule.open(p) as cap:
        events = list(cap.records(kind="revert"))
        assert not list(cap.records("memory"))
    assert [e.op for e in events] == ["forget"] * 3 and all(e.actor == "langgraph" for e in events)
    assert "delete thread gone" in events[0].reason

    def check(saver: CapsuleSaver) -> None:
        assert saver.get_tuple(_cfg("gone")) is None
        assert saver.get_tuple(_cfg("gone", "child:x")) is None
        assert saver.get_tuple(_cfg("gone", cid=ids["gone"][0])) is None
        assert list(saver.list(_cfg("gone"))) == []
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(_cfg("pruned"))] == [ids["pruned"][-1]]
        assert [t.config["configurable"]["checkpoint_id"] for t in saver.list(_cfg("runs"))] == ids["runs"][:1:-1]
        assert _dump(saver.list(None)) == expect

    with CapsuleSaver(p) as w2:
        check(w2)
    with CapsuleSaver(p, read_only=True) as r:
        check(r)
    assert capsule.verify(p).ok
    out = tmp_path / "small.capsule"
    rep = capsule.compact(p, out, keep="live")
    assert rep["dropped"] == 3 * (6 + 3 + 2)
    assert capsule.verify(out).ok
    with CapsuleSaver(out, read_only=True) as r:
        check(r)
    # the CLI's compaction, in place: the forgotten records' bytes are gone from history too
    res = _cli("compact", p, "--keep", "live", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["dropped"] == 33
    assert _cli("verify", p).returncode == 0
    with capsule.open(p) as cap:
        assert {k: sum(1 for _ in cap.records(k)) for k in KINDS} == _live(p)
    for mode in ({}, {"read_only": True}):
        with CapsuleSaver(p, **mode) as s:  # type: ignore[arg-type]
            check(s)


# --- the file stays a capsule ----------------------------------------------------------------------
def test_saver_records_stay_out_of_the_agents_memory_and_the_cli_reads_the_file(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        _fill(w, ["zebrathread", "b"], 3)  # the channel values repeat the thread id
        w.delete_thread("b")
        with w.capsule.commit() as tx:
            mem = tx.remember("the agent's own note on the zebrathread ticket", tier="scratch")
        commits = w.capsule.commit_count
        assert [m.id for m in w.capsule.records("memory")] == [mem]
        assert [m.id for m in w.capsule.search("zebrathread", k=50)] == [mem]
    assert capsule.verify(p).ok
    # one commit per put and per put_writes (the second put_writes of each step stores its
    # special write), one for the delete, one for the memory, plus the file's first
    assert commits == 1 + 2 * 3 * 3 + 1 + 1
    for args in (["verify"], ["open", "--json"], ["log", "--json"], ["state", "--json"], ["timeline"]):
        res = _cli(args[0], p, *args[1:])
        assert res.returncode == 0, (args, res.stderr)
    state = json.loads(_cli("state", p, "--json").stdout)
    assert [m["id"] for tier in state["memories"].values() for m in tier] == [mem]
    assert state["other_kinds"] == {"langgraph.checkpoint": 3, "langgraph.writes": 6}  # live ones only
    hits = json.loads(_cli("search", p, "zebrathread", "--mode", "lexical", "--json").stdout)
    assert [h["id"] for h in hits] == [mem]
    assert [r["id"] for r in json.loads(_cli("list", p, "--json", "-n", "1000").stdout)] == [mem]
    # the timeline counts each commit's records by kind, so it names the saver's kinds
    events = json.loads(_cli("timeline", p, "--json").stdout)["events"]
    summaries = [e["summary"] for e in events if e["kind"] == "commit"]
    assert sum("(langgraph.checkpoint 1)" in x for x in summaries) == 6
    assert sum("(langgraph.writes 1)" in x for x in summaries) == 12
    assert [e["kind"] for e in events if e["kind"] == "lifecycle"] == ["lifecycle"]  # the delete
    assert "langgraph.checkpoint" in _cli("timeline", p).stdout
    log = json.loads(_cli("log", p, "--json").stdout)
    assert sum(1 for row in log if row["records"]) == commits - 1  # (close may add an index-only commit)
    # a checkpoint is a record `get` and `why` show
    with capsule.open(p) as cap:
        last = list(cap.live("langgraph.checkpoint"))[-1]
    got = json.loads(_cli("get", p, last.id[:12], "--json").stdout)
    assert got["kind"] == "langgraph.checkpoint" and got["thread_id"] == "zebrathread" and got["step"] == 2
    why = _cli("why", p, last.id)
    assert why.returncode == 0 and "langgraph.checkpoint" in why.stdout, why.stderr


def test_no_pickle_reaches_the_file(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"

    class Opaque:  # JsonPlusSerializer cannot encode it without the pickle fallback
        pass

    with CapsuleSaver(p) as w:
        _fill(w, ["a"], 2)
        n = w.capsule.commit_count
        ck = empty_checkpoint()
        ck["channel_values"] = {"x": Opaque()}
        with pytest.raises(Exception) as ei:
            w.put(_cfg("a"), ck, {"source": "loop", "step": 5}, {"x": 1})
        assert not isinstance(ei.value, AssertionError)
        assert w.capsule.commit_count == n  # nothing was written
    types = []
    with capsule.open(p) as cap:
        for rec in cap.records("langgraph.checkpoint"):
            types += [rec.value["checkpoint_type"], rec.value["metadata_type"]]
        for rec in cap.records("langgraph.writes"):
            types += [w[2] for w in rec.value["writes"]]
    assert types and "pickle" not in types and set(types) <= {"msgpack", "json", "bytes", "null"}


# --- readers and bad input ------------------------------------------------------------------------
def test_a_read_only_saver_follows_another_savers_writes(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        _fill(w, ["a"], 2)
        r = CapsuleSaver(p, read_only=True)  # lock-free beside the writer
        assert len(list(r.list(None))) == 2
        _fill(w, ["b"], 1)
        w.delete_thread("a")
        assert [t.config["configurable"]["thread_id"] for t in r.list(None)] == ["b"]
        assert r.get_tuple(_cfg("a")) is None
        with pytest.raises(capsule.ReadOnlyError):
            r.put(_cfg("c"), empty_checkpoint(), {}, {})
        with pytest.raises(capsule.ReadOnlyError):
            r.delete_thread("b")
        with pytest.raises(capsule.ReadOnlyError):
            asyncio.run(r.aput_writes(_cfg("b", cid="x"), [("c", 1)], "t"))
        r.close()
    with pytest.raises(capsule.CapsuleNotFound):
        CapsuleSaver(tmp_path / "missing.capsule", read_only=True)


def test_a_locked_capsule_is_a_one_line_capsule_error(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p), pytest.raises(capsule.Locked) as ei:
        CapsuleSaver(p, timeout=0.1)
    assert "locked" in str(ei.value) and "\n" not in str(ei.value)


def test_a_corrupt_capsule_is_a_one_line_capsule_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.capsule"
    junk.write_bytes(b"not a capsule at all" * 10)
    for mode in ({}, {"read_only": True}):
        with pytest.raises(capsule.CapsuleError) as ei:
            CapsuleSaver(junk, **mode)  # type: ignore[arg-type]
        assert "\n" not in str(ei.value) and str(junk) in str(ei.value)
    assert junk.read_bytes() == b"not a capsule at all" * 10  # never written

    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        _fill(w, ["a"], 3)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage before the last commit: not a torn tail
    p.write_bytes(bytes(data))
    with pytest.raises(capsule.CorruptError) as ce:
        CapsuleSaver(p)
    assert "\n" not in str(ce.value)


def test_a_config_without_thread_id_raises_langgraphs_error(tmp_path: Path) -> None:
    with CapsuleSaver(tmp_path / "g.capsule") as w:
        bads: list[Any] = [{}, {"configurable": {}}, {"configurable": {"checkpoint_ns": ""}}]
        for bad in bads:
            with pytest.raises(ValueError, match="thread_id"):
                w.get_tuple(bad)
            with pytest.raises(ValueError, match="thread_id"):
                w.put(bad, empty_checkpoint(), {}, {})
            with pytest.raises(ValueError, match="thread_id"):
                list(w.list(bad))
        with pytest.raises(ValueError, match="checkpoint_id"):
            w.put_writes(_cfg("a"), [("c", 1)], "t")
        with pytest.raises(ValueError, match="strategy"):
            w.prune(["a"], strategy="keep_some")
        assert w.capsule.commit_count == 1


# --- the index: reads never scan history ----------------------------------------------------------
def _bulk(path: Path, threads: int, per: int) -> list[list[str]]:
    """threads x per checkpoints, written in a few big commits through the saver's own mapping
    (10,000 single commits would take the test's whole budget)."""
    from langgraph.checkpoint.base.id import uuid6
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer(pickle_fallback=False)
    ids: list[list[str]] = [[] for _ in range(threads)]
    with capsule.create(path) as cap:
        for i in range(per):
            with cap.commit() as tx:
                for t in range(threads):
                    ck = empty_checkpoint()
                    ck["id"] = str(uuid6(clock_seq=i))
                    ck["channel_values"] = {"step": i, "thread": t}
                    md = {"source": "loop", "step": i}
                    parent = ids[t][-1] if ids[t] else None
                    value = records.checkpoint_value((f"t{t}", "", ck["id"]), parent, serde.dumps_typed(ck),
                                                     serde.dumps_typed(md), md, time=cap.clock())
                    tx.put(GenericRecord(records.CHECKPOINT, value))
                    ids[t].append(ck["id"])
    return ids


def test_reads_use_the_index_not_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.capsule"
    ids = _bulk(p, 100, 100)
    t0 = time.perf_counter()
    saver = CapsuleSaver(p)
    opened = time.perf_counter() - t0

    def no_scan(self: Store, kind: str | None = None) -> Iterator[Any]:
        raise AssertionError("a read walked the whole history")

    monkeypatch.setattr(Store, "records", no_scan)
    t0 = time.perf_counter()
    for t in range(0, 100, 10):
        latest = saver.get_tuple(_cfg(f"t{t}"))
        assert latest is not None and latest.checkpoint["channel_values"] == {"step": 99, "thread": t}
        mid = saver.get_tuple(_cfg(f"t{t}", cid=ids[t][50]))
        assert mid is not None and mid.metadata["step"] == 50 and mid.parent_config is not None
        assert mid.parent_config["configurable"]["checkpoint_id"] == ids[t][49]
        page = list(saver.list(_cfg(f"t{t}"), limit=10))
        assert [x.metadata["step"] for x in page] == list(range(99, 89, -1))
    reads = (time.perf_counter() - t0) / 30
    cfg = saver.put(_cfg("t1", cid=ids[1][-1]), empty_checkpoint(), {"source": "loop", "step": 100}, {})
    tup = saver.get_tuple(_cfg("t1"))
    assert tup is not None and tup.config == cfg
    saver.close()
    # generous bounds (a loaded 2-core machine): a scan of 10,000 records would take seconds
    assert reads < 0.05, f"{reads * 1e3:.1f} ms per read"
    print(f"open 10,000 checkpoints: {opened * 1e3:.0f} ms; read {reads * 1e3:.2f} ms")
    monkeypatch.undo()
    with CapsuleSaver(p, read_only=True) as r:
        assert r.get_tuple(_cfg("t1")) == tup


def test_the_async_api_runs_beside_the_event_loop(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        async with CapsuleSaver(tmp_path / "g.capsule") as s:
            cfgs = await asyncio.gather(*(s.aput(_cfg(f"t{i}"), empty_checkpoint(), {"step": i}, {})
                                          for i in range(5)))
            await s.aput_writes(cfgs[0], [("c", 1)], "task")
            assert (await s.aget_tuple(cfgs[0])) is not None
            return [t.metadata["step"] async for t in s.alist(None)]

    assert sorted(asyncio.run(main())) == [0, 1, 2, 3, 4]
    assert os.path.getsize(tmp_path / "g.capsule") > 0


class _Boom:
    """Unpickling this writes a file: the proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.path), "unpickled"))


def test_a_planted_pickle_is_never_loaded(tmp_path: Path) -> None:
    import pickle

    p, proof = tmp_path / "g.capsule", tmp_path / "proof"
    with CapsuleSaver(p) as w:
        cfg = w.put(_cfg("a"), empty_checkpoint(), {"source": "loop", "step": 0}, {})
    evil = ("pickle", pickle.dumps(_Boom(str(proof))))
    value = records.checkpoint_value(("a", "", "zzz"), cfg["configurable"]["checkpoint_id"], evil, evil, {}, time=1)
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        tx.put(GenericRecord(records.CHECKPOINT, value))
    for mode in ({}, {"read_only": True}):
        with pytest.raises(capsule.InvalidRecordError) as ei:
            CapsuleSaver(p, **mode)  # type: ignore[arg-type]
        assert "langgraph.checkpoint record" in str(ei.value) and "\n" not in str(ei.value)
    assert not proof.exists()
    assert capsule.verify(p).ok  # a sound capsule: only the saver refuses what it holds


@pytest.mark.parametrize("kind, change, message", [
    ("langgraph.checkpoint", {"thread_id": 7}, "thread_id"),
    ("langgraph.checkpoint", {"checkpoint": "not bin"}, "checkpoint"),
    ("langgraph.checkpoint", {"parent_checkpoint_id": ["x"]}, "parent_checkpoint_id"),
    ("langgraph.writes", {"writes": [[0, "c", "json"]]}, "idx, channel, type, bin"),
    ("langgraph.writes", {"writes": {"c": 1}}, "writes"),
    ("langgraph.writes", {"task_id": None}, "task_id"),
])
def test_a_malformed_saver_record_is_refused_at_open_and_nothing_is_written(tmp_path: Path, kind: str,
                                                                            change: dict[str, Any], message: str) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        _fill(w, ["a"], 1)
    with capsule.open(p, "a") as cap:
        good = next(iter(cap.live(kind))).value
        with cap.commit() as tx:
            bad = {k: v for k, v in good.items() if k != "kind"}
            bad.update({k: v for k, v in change.items() if v is not None})
            for k in [k for k, v in change.items() if v is None]:
                del bad[k]
            rid = tx.put(GenericRecord(kind, {**bad, "time": bad["time"] + 1}))
    before = p.read_bytes()
    for mode in ({}, {"read_only": True}):
        with pytest.raises(capsule.InvalidRecordError, match=message) as ei:
            CapsuleSaver(p, **mode)  # type: ignore[arg-type]
        assert rid in str(ei.value) and str(p) in str(ei.value) and "\n" not in str(ei.value)
    assert p.read_bytes() == before
    res = _cli("forget", p, rid, "--reason", "not a checkpoint")  # the documented repair
    assert res.returncode == 0, res.stderr
    with CapsuleSaver(p, read_only=True) as r:
        assert len(list(r.list(None))) == 1


def test_ids_are_nfc_so_a_reopened_saver_answers_as_the_writer(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    decomposed, composed = "Cafe\u0301", "Caf\u00e9"  # the file stores text in NFC (spec 5.1)
    with CapsuleSaver(p) as w:
        cfg = w.put(_cfg(decomposed, "ns-" + decomposed), empty_checkpoint(), {"source": "input", "step": -1}, {})
        w.put_writes(cfg, [("chan-" + decomposed, 1)], "task-" + decomposed)
        live = _dump(w.list(None))
        assert w.get_tuple(_cfg(composed, "ns-" + composed)) is not None
    assert live[0][0]["configurable"]["thread_id"] == composed
    assert live[0][4] == [("task-" + composed, "chan-" + composed, 1)]
    with CapsuleSaver(p, read_only=True) as r:
        assert _dump(r.list(None)) == live
        for thread in (decomposed, composed):
            got = r.get_tuple(_cfg(thread, "ns-" + thread))
            assert got is not None and _dump([got]) == live


def test_a_checkpoint_put_again_after_its_deletion_is_live_again_with_a_fixed_clock(tmp_path: Path) -> None:
    """Same bytes, same time, so the same content id as the forgotten record: the capsule
    restores the dead record (a ``revert`` with ``restore``) instead of storing it twice."""
    p = tmp_path / "g.capsule"
    ck = empty_checkpoint()
    with CapsuleSaver(p, clock=lambda: 1_700_000_000 * 10**9) as w:
        for _ in range(2):
            cfg = w.put(_cfg("a"), ck, {"source": "input", "step": -1}, {})
            w.put_writes(cfg, [("c", "v")], "task")
            first = w.get_tuple(_cfg("a"))
            assert first is not None and first.pending_writes == [("task", "c", "v")]
            w.delete_thread("a")
            assert w.get_tuple(_cfg("a")) is None and _live(p) == {k: 0 for k in KINDS}
        w.put(_cfg("a"), ck, {"source": "input", "step": -1}, {})
        w.put_writes(cfg, [("c", "v")], "task")
        assert _dump([w.get_tuple(_cfg("a"))]) == _dump([first])  # type: ignore[list-item]
    assert _live(p) == {k: 1 for k in KINDS}
    with CapsuleSaver(p, read_only=True) as r:
        assert _dump(r.list(None)) == _dump([first])  # type: ignore[list-item]
    assert capsule.verify(p).ok


def test_the_record_cache_changes_no_answer_and_tuples_are_fresh(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        _fill(w, ["a", "b"], 6)
        ref = _dump(w.list(None))
        t = w.get_tuple(_cfg("a"))
        assert t is not None
        t.checkpoint["channel_values"]["msgs"].append("changed by the caller")
        t.metadata["step"] = 99
        assert t.pending_writes is not None
        t.pending_writes.clear()
        assert _dump(w.list(None)) == ref  # the cache holds bytes; every tuple is decoded afresh
    for limit in (0, 3000, 64 * 2**20):  # none, evicting, all
        with CapsuleSaver(p, read_only=True, cache_bytes=limit) as r:
            assert _dump(r.list(None)) == ref
            assert _dump(r.list(None)) == ref
            assert r._cache.size <= limit and (len(r._cache) == 0) == (limit == 0)
    with pytest.raises(ValueError, match="cache_bytes"):
        CapsuleSaver(p, cache_bytes=-1)
