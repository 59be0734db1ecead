"""The questions of spec 13.5: beliefs, why, diff, timeline, audit (library and CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.format.records import parse_iso_time


def _build(path: Path) -> dict[str, Any]:
    key = capsule.generate_key()
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            tx.set_identity("agent-1", name="Ada", keys=[key.public_key])
            m1 = tx.remember("tests pass", tier="validated")
            m2 = tx.remember("old thought", tier="scratch")
            con = tx.constrain("no email after 6pm")
        cap.checkpoint("day-1", key=key)
        with cap.commit() as tx:
            m3 = tx.remember("customer asked for invoice")
            d = tx.decide("send the invoice", evidence=[m1, m3, m2])
            tx.approve(d, key)
        cap.run_once("email:42", lambda: {"sent": 1}, inputs={"decision": d})
        cap.checkpoint("day-2", key=key)
        with cap.commit() as tx:
            tx.constrain("no email after 6pm", status="revoked")
            m4 = tx.remember("later fact")
        cap.checkpoint("day-3", key=key)
        cap.rollback("day-2", key=key)  # drops m4, restores the constraint: a revert
        cap.tasks.add("fetch")
        cap.tasks.add("done-task")
        cap.tasks.claim("done-task", "w1")
        cap.tasks.complete("done-task", "w1", result=1)
    return {"key": key, "m1": m1, "m2": m2, "m3": m3, "m4": m4, "d": d, "con": con}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    p = tmp_path_factory.mktemp("q") / "a.capsule"
    return p, _build(p)


def test_beliefs_counts_tiers_newest_first_and_open_tasks(built: tuple[Path, dict[str, Any]]) -> None:
    p, ids = built
    with capsule.open(p) as cap:
        b = cap.beliefs(limit=1).to_dict()
    assert b["memories"]["working"]["count"] == 1  # m4 was rolled back
    assert [m["id"] for m in b["memories"]["validated"]["newest"]] == [ids["m1"]]
    assert b["decisions"]["count"] == 1
    assert [c["id"] for c in b["constraints"]] == [ids["con"]]  # restored by the rollback
    assert b["identity"]["agent_id"] == "agent-1"
    assert [t["id"] for t in b["tasks_open"]] == ["fetch"]
    assert b["actions_in_doubt"] == []
    with capsule.open(p, at="day-1") as then:
        assert then.beliefs().to_dict()["decisions"]["count"] == 0


def test_why_lineage_approvals_constraints_checkpoint_marks(built: tuple[Path, dict[str, Any]]) -> None:
    p, ids = built
    with capsule.open(p) as cap:
        w = cap.why(ids["d"][:10], trust=ids["key"].public_key).to_dict()
        m4 = cap.why(ids["m4"]).to_dict()
    root = w["root"]
    assert root["id"] == ids["d"] and root["kind"] == "decision"
    assert [e["id"] for e in root["evidence"]] == [ids["m1"], ids["m3"], ids["m2"]]
    [a] = root["approvals"]
    assert a["signature_ok"] and a["verified"]
    assert [c["id"] for c in w["constraints"]] == [ids["con"]]
    assert w["checkpoint"]["label"] == "day-2" and w["checkpoint"]["signature_ok"]
    assert w["checkpoint"]["anchored"] is True
    assert [m["mark"] for m in m4["root"]["marks"]] == ["rolled-back"]
    assert m4["checkpoint"]["label"] == "day-3"


def test_why_refuses_unknown_and_ambiguous_ids(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    p, _ = built
    with capsule.open(p) as cap:
        with pytest.raises(capsule.NotFound):
            cap.why("0" * 64)
        with pytest.raises(capsule.NotFound):
            cap.why("zz")
    q = tmp_path / "many.capsule"
    with capsule.create(q) as cap:
        seen: dict[str, str] = {}
        n = 0
        while True:  # enough records that two share a 4-digit prefix
            with cap.commit() as tx:
                new = [tx.remember(f"fact {n + i}") for i in range(400)]
            n += 400
            dup = next((r[:4] for r in new if seen.setdefault(r[:4], r) != r), None)
            if dup:
                break
        with pytest.raises(capsule.UsageError, match="ambiguous"):
            cap.why(dup)


def test_diff_between_labels(built: tuple[Path, dict[str, Any]]) -> None:
    p, ids = built
    with capsule.open(p) as cap:
        d = cap.diff("day-1", "day-2").to_dict()
        back = cap.diff("day-3", cap.log()[-1].seq).to_dict()
        with pytest.raises(capsule.UsageError, match="after"):
            cap.diff("day-2", "day-1")
        with pytest.raises(capsule.UsageError, match="not a checkpoint label"):
            cap.diff("day-1", "no-such-label")
    assert d["added"]["by_kind"] == {"action": 2, "approval": 1, "decision": 1, "memory": 1}
    assert d["added"]["by_tier"] == {"working": 1}
    assert [c["label"] for c in d["checkpoints"]] == ["day-2"]
    assert [(a["key"], a["ok"]) for a in d["actions"]] == [("email:42", True)]
    assert ids["m4"] in [r["id"] for r in back["removed"]["first"]]
    assert back["removed"]["by_kind"] == {"constraint": 1, "memory": 1}  # m4 and the revocation
    assert [t["task"] for t in back["tasks_finished"]] == ["done-task"]


def test_timeline_filters(built: tuple[Path, dict[str, Any]]) -> None:
    p, _ = built
    with capsule.open(p) as cap:
        all_ = cap.timeline().to_dict()
        acts = cap.timeline(kinds=["action"]).to_dict()["events"]
        last2 = cap.timeline(limit=2).to_dict()
        t_first = all_["events"][0]["time"]
        with pytest.raises(capsule.UsageError):
            cap.timeline(kinds=["nope"])
    assert {e["kind"] for e in all_["events"]} == {"commit", "checkpoint", "action", "task"}
    assert [e["summary"] for e in acts] == ["intent email:42 #1", "result email:42 #1 ok"]
    assert last2["events"] == all_["events"][-2:] and last2["total"] is None  # older ones not read
    seqs = [e["seq"] for e in all_["events"]]
    assert seqs == sorted(seqs) and t_first


def test_audit_links_decision_and_constraints(built: tuple[Path, dict[str, Any]]) -> None:
    p, ids = built
    with capsule.open(p) as cap:
        a = cap.audit("email:42").to_dict()
        with pytest.raises(capsule.NotFound):
            cap.audit("email:43")
        root = cap.view(a["intent"]["commit"]["seq"]).state_root
    assert [s["phase"] for s in a["steps"]] == ["intent", "result"] and a["status"] == "done"
    assert a["state_root_at_intent"] == root
    [d] = a["decisions"]
    assert d["id"] == ids["d"] and d["link"] == "inputs" and d["approvals"][0]["verified"]
    assert [c["id"] for c in a["constraints"]] == [ids["con"]]
    assert a["checkpoint"]["label"] == "day-2" and a["checkpoint"]["anchored"] is None


def test_questions_never_write(built: tuple[Path, dict[str, Any]]) -> None:
    p, ids = built
    before = p.read_bytes()
    with capsule.open(p) as cap:
        cap.beliefs(), cap.why(ids["d"]), cap.diff("day-1", "day-3"), cap.timeline(), cap.audit("email:42")
    assert p.read_bytes() == before


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad.capsule"
    ids = _build(p)
    raw = bytearray(p.read_bytes())
    with capsule.open(p) as cap:
        off = cap._store.locate(bytes.fromhex(ids["m1"]))[0]
    raw[off + 40] ^= 0xFF  # inside the first RECORDS frame's payload, long before the last commit
    p.write_bytes(bytes(raw))
    with capsule.open(p) as cap:
        with pytest.raises(capsule.CorruptError):
            cap.timeline()
        with pytest.raises(capsule.CorruptError):
            cap.why(ids["d"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_json_tables_and_one_line_errors(built: tuple[Path, dict[str, Any]]) -> None:
    p, ids = built
    f = str(p)
    r = _cli("why", f, ids["d"][:8], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["root"]["id"] == ids["d"]
    r = _cli("beliefs", f, "--at", "day-1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"]["count"] == 0
    r = _cli("diff", f, "--from", "day-1", "--to", "day-2")
    assert r.returncode == 0 and "checkpoints signed" in r.stdout
    r = _cli("timeline", f, "--kind", "action", "--json")
    assert [e["kind"] for e in json.loads(r.stdout)["events"]] == ["action", "action"]
    r = _cli("audit", f, "email:42")
    assert r.returncode == 0 and "send the invoice" in r.stdout
    for bad in (("diff", f, "--from", "day-2", "--to", "day-1"), ("why", f, "0000"), ("audit", f, "nope"),
                ("diff", f, "--from", "nope", "--to", "day-1"), ("timeline", f, "--since", "someday")):
        r = _cli(*bad)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (bad, r.stderr)


def test_beliefs_newest_first_by_time_not_by_text(tmp_path: Path) -> None:
    """Regression: ISO times drop trailing zeros (".851Z" is later than ".85Z" but sorts
    before it as text, "1" < "Z"), so newest-first must compare the times, not their text."""
    t0 = 1_780_000_000_000_000_000
    with capsule.create(tmp_path / "t.capsule") as cap:
        with cap.commit() as tx:
            tx.remember("later", time=t0 + 851_000_000)  # ....851Z
            tx.remember("earlier", time=t0 + 850_000_000)  # ....85Z
            tx.remember("earliest", time=t0)
        got = [m["text"] for m in cap.beliefs(limit=2).to_dict()["memories"]["working"]["newest"]]
    assert got == ["later", "earlier"]


def test_cli_refuses_a_damaged_file_in_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.capsule"
    ids = _build(p)
    with capsule.open(p) as cap:
        off = cap._store.locate(bytes.fromhex(ids["m1"]))[0]
    raw = bytearray(p.read_bytes())
    raw[off + 40] ^= 0xFF
    p.write_bytes(bytes(raw))
    for args in (("why", str(p), ids["d"]), ("timeline", str(p)), ("audit", str(p), "email:42")):
        r = _cli(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    assert p.read_bytes() == bytes(raw)


@pytest.mark.slow
def test_benchmark_quick_run_answers_every_question(tmp_path: Path) -> None:
    pytest.importorskip("langgraph.checkpoint.sqlite")  # the `bench` extra
    out = tmp_path / "q.json"
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "questions.py"), "--quick", "--out", str(out),
                        "--tmpdir", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert set(rows) == {"why", "diff", "beliefs_json", "audit"}
    assert all(r["capsule_s"] > 0 and r["sqlitesaver_s"] > 0 for r in rows.values())


def test_walk_skipping_by_index_counts_finds_every_record(tmp_path: Path) -> None:
    """The walk skips RECORDS frames between INDEX frames whose kind counts agree (9.2):
    it must still find exactly what a full read finds, wherever the records lie."""
    from capsule.format.kindwalk import walk

    key = capsule.generate_key()
    p = tmp_path / "w.capsule"
    with capsule.create(p) as cap:
        for k in range(30):
            with cap.commit() as tx:
                ids = [tx.remember(f"step {k} fact {i}") for i in range(120)]
                if k == 3:
                    con = tx.constrain("be brief")
                if k == 20:
                    d = tx.decide("ship", evidence=ids[:3])
                    tx.approve(d, key)
            cap.checkpoint(f"ck-{k}", key=key)
        with cap.commit() as tx:
            tx.constrain("be brief", status="revoked")  # after the last INDEX
        assert cap._store.snap.segments, "the capsule must have INDEX frames for this test to mean anything"
        kinds = ("constraint", "approval", "decision")
        got = [r.id for _, _, r in walk(cap._store, kinds)]
        assert got == [r.id for r in cap.records() if r.kind in kinds]
        w = cap.why(d).to_dict()
        assert [c["id"] for c in w["constraints"]] == [con]
        assert len(w["root"]["approvals"]) == 1 and w["checkpoint"]["label"] == "ck-20"
        assert cap.beliefs().to_dict()["constraints"] == []


# --- diff of two files that share lineage, and expiry (issue #11) ----------------------------


def test_diff_of_two_copies_that_diverged(tmp_path: Path) -> None:
    import shutil

    key = capsule.generate_key()
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap:
        with cap.commit() as tx:
            tx.remember("plan", tier="scratch")
        cap.checkpoint("base", key=key)
        with cap.commit() as tx:
            fact = tx.remember("the fact")
        common = cap.log()[-1].seq
    shutil.copy(a, b)
    with capsule.open(a, "a") as cap:
        with cap.commit() as tx:
            only_a = tx.remember("only in a")
        cap.run_once("a:1", lambda: 1)
    with capsule.open(b, "a") as cap:
        cap.rollback("base")  # drops the fact in b
        with cap.commit() as tx:
            again = tx.remember("the fact", tier="validated")
        cap.run_once("b:1", lambda: 1)
        cap.checkpoint("b-only", key=key)
    with capsule.open(a) as ca, capsule.open(b) as cb:
        d = ca.diff(cb).to_dict()
    assert d["lineage"] == {"relation": "same-file", "ancestor": {
        "in": "both", "file_id": d["lineage"]["ancestor"]["file_id"], "seq": common,
        "root": d["lineage"]["ancestor"]["root"]}}
    assert d["added"]["by_tier"] == {"validated": 1} and [n["id"] for n in d["added"]["first"]][0:1] != []
    reasons = {n["id"]: n["reason"] for n in d["removed"]["first"]}
    assert reasons[fact] == "rolled back" and reasons[only_a] == "not in B"
    assert d["tier_changes"] == [{"text": "the fact", "from": "working", "to": "validated", "removed": fact,
                                  "added": again}]
    assert [x["key"] for x in d["actions"]] == ["b:1"]  # a's own action is not b's event
    assert [c["label"] for c in d["checkpoints"]] == ["b-only"]


def test_diff_of_a_fork_and_its_parent_both_ways(tmp_path: Path) -> None:
    key = capsule.generate_key()
    p, c, s = tmp_path / "p.capsule", tmp_path / "c.capsule", tmp_path / "s.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("shared")
        cap.run_once("before:1", lambda: 1)
        cap.checkpoint("day-1", key=key)
        fork_seq = cap.resolve("day-1").seq
    with capsule.fork(p, c, at="day-1") as child:
        with child.commit() as tx:
            mine = tx.remember("child fact")
        child.tasks.add("t")
        child.tasks.claim("t", "w1")
        child.tasks.complete("t", "w1", result=1)
        child.checkpoint("c1", key=key)
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        theirs = tx.remember("parent fact")
    capsule.fork(p, s, at="day-1").close()
    with capsule.open(p) as parent, capsule.open(c) as child, capsule.open(s) as sib:
        down = parent.diff(child).to_dict()
        up = child.diff(parent).to_dict()
        sibs = child.diff(sib).to_dict()
    assert down["lineage"]["relation"] == "b-forks-a"
    assert down["lineage"]["ancestor"]["in"] == "a" and down["lineage"]["ancestor"]["seq"] == fork_seq
    assert [n["id"] for n in down["added"]["first"] if n["kind"] == "memory"] == [mine]
    assert [(n["id"], n["reason"]) for n in down["removed"]["first"]] == [(theirs, "not in B")]
    assert [c["label"] for c in down["checkpoints"]] == ["c1"]
    assert [t["task"] for t in down["tasks_finished"]] == ["t"]
    assert down["actions"] == []  # the journal the fork copied is not a new action
    assert up["lineage"]["relation"] == "a-forks-b" and up["lineage"]["ancestor"]["in"] == "b"
    assert [n["id"] for n in up["added"]["first"]] == [theirs] and up["checkpoints"] == []
    assert sibs["lineage"] == {"relation": "siblings", "ancestor": None}
    assert [n["id"] for n in sibs["removed"]["first"] if n["kind"] == "memory"] == [mine]


def test_diff_of_unrelated_files_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    for f in (a, b):
        with capsule.create(f) as cap, cap.commit() as tx:
            tx.remember("same text, other lineage")
    with capsule.open(a) as ca, capsule.open(b) as cb:
        with pytest.raises(capsule.UsageError, match="share no lineage"):
            ca.diff(cb)
        with pytest.raises(capsule.UsageError, match="no second point"):
            ca.diff(cb, "x")
    before = a.read_bytes(), b.read_bytes()
    for args in (("diff", str(a), str(b)), ("diff", str(a), str(a), "--from", "1"), ("diff", str(a)),
                 ("diff", str(a), "--to", "1")):
        r = _cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    since = _cli("diff", str(a), "--from", "1", "--json")  # no --to: up to the newest commit
    assert since.returncode == 0, since.stderr
    assert json.loads(since.stdout)["to"]["seq"] == json.loads(_cli("log", str(a), "--json").stdout)[-1]["seq"]
    assert (a.read_bytes(), b.read_bytes()) == before


def test_cli_diff_of_two_files(tmp_path: Path) -> None:
    p, c = tmp_path / "p.capsule", tmp_path / "c.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("shared")
    with capsule.fork(p, c) as child, child.commit() as tx:
        tx.remember("new in the fork")
    r = _cli("diff", str(p), str(c), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["lineage"]["relation"] == "b-forks-a" and d["added"]["count"] == 1
    r = _cli("diff", str(p), str(c))
    assert r.returncode == 0 and "lineage: b-forks-a" in r.stdout and "common ancestor: seq" in r.stdout


def test_diff_lists_memories_that_expired_in_between_as_removed(tmp_path: Path) -> None:
    s = 1_000_000_000
    now = [1_800_000_000 * s]
    key = capsule.generate_key()
    f = tmp_path / "ttl.capsule"
    with capsule.create(f, clock=lambda: now[0]) as cap:
        with cap.commit() as tx:
            brief = tx.remember("fleeting", ttl=10 * s)
            tx.remember("lasting")
        cap.checkpoint("a", key=key)
        now[0] += 60 * s  # past the ttl
        with cap.commit() as tx:
            tx.remember("later")
        cap.checkpoint("b", key=key)
        now[0] += 60 * s
        cap.checkpoint("c", key=key)
        d = cap.diff("a", "b").to_dict()
        after = cap.diff("b", "c").to_dict()
    assert d["removed"]["count"] == 1 and d["removed"]["by_reason"] == {"expired": 1}
    assert [(n["id"], n["reason"]) for n in d["removed"]["first"]] == [(brief, "expired")]
    assert d["removed"]["by_kind"] == {"memory": 1}
    assert after["removed"]["count"] == 0  # expired before b: not removed again


def test_diff_counts_as_added_only_what_becomes_live(tmp_path: Path) -> None:
    # events are never live (13.1): a forget between two points added nothing, removed one, so
    # the diff's counts reconcile with the state's (a QA run found the revert counted as added)
    key = capsule.generate_key()
    with capsule.create(tmp_path / "d.capsule") as cap:
        with cap.commit() as tx:
            m = tx.remember("old")
        cap.checkpoint("a", key=key)
        with cap.commit() as tx:
            tx.forget(m)
            new = tx.remember("new")
        cap.checkpoint("b", key=key)
        d = cap.diff("a", "b").to_dict()
        before, after = len(cap.view("a").state().live), len(cap.state().live)
    assert d["added"]["by_kind"] == {"memory": 1} and [n["id"] for n in d["added"]["first"]] == [new]
    assert d["removed"]["by_reason"] == {"forgotten": 1}
    assert after - before == d["added"]["count"] - d["removed"]["count"]
    assert [e["op"] for e in d["lifecycle"]] == ["forget"]  # the event is listed, as an event


def test_timeline_limit_agrees_with_the_whole_walk(built: tuple[Path, dict[str, Any]]) -> None:
    """The walk back from the last commit gives exactly the newest ``limit`` of the full answer,
    for every limit and filter; ``total`` is the full count whenever it reached the first commit."""
    p, _ = built
    with capsule.open(p) as cap:
        events = cap.timeline().to_dict()["events"]
        mid = events[len(events) // 2]["time"]
        for kinds in (None, ["commit"], ["action", "task"], ["checkpoint"], ["lifecycle"]):
            for since in (None, parse_iso_time(mid)):
                full = cap.timeline(kinds=kinds, since=since).to_dict()
                for k in range(len(full["events"]) + 3):
                    d = cap.timeline(kinds=kinds, since=since, limit=k).to_dict()
                    assert d["events"] == full["events"][max(0, len(full["events"]) - k):] if k else d["events"] == []
                    assert d["total"] in (None, full["total"]) and d["limit"] == k
                    if k > len(full["events"]):
                        assert d["total"] == full["total"]


def test_timeline_limit_reads_the_newest_commits_only(tmp_path: Path) -> None:
    f = tmp_path / "long.capsule"
    with capsule.create(f) as cap:
        for i in range(400):
            with cap.commit() as tx:
                tx.put_many([{"text": f"memory {i}-{j} " + os.urandom(500).hex()} for j in range(20)])
    with capsule.open(f) as cap:
        h = cap._store.h
        seen = [0]
        real = h.pread

        def counting(off: int, n: int) -> bytes:
            seen[0] += n
            return real(off, n)

        h.pread = counting
        d = cap.timeline(limit=3).to_dict()
        small = seen[0]
        seen[0] = 0
        full = cap.timeline().to_dict()
    assert [e["summary"] for e in d["events"]] == [e["summary"] for e in full["events"][-3:]]
    assert d["total"] is None and full["total"] == len(full["events"]) > 400
    # the last commits' frames (the close's TABLE of every record among them), not the 8 MB history
    assert small * 10 < seen[0], (small, seen[0])


def test_timeline_limit_refuses_damage_in_the_commits_it_reads(tmp_path: Path) -> None:
    f = tmp_path / "d.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:  # 4,096 records or more: an INDEX follows, so open does not replay them
            tx.put_many([{"text": f"bulk {i} " + os.urandom(40).hex()} for i in range(5000)])
        bulk = cap.log()[-1]
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"fact {i}")
    raw = bytearray(f.read_bytes())
    raw[bulk.offset // 2] ^= 0xFF  # inside a RECORDS frame of the bulk commit
    f.write_bytes(bytes(raw))
    with capsule.open(f) as cap:
        newest = cap.timeline(limit=4).to_dict()  # three small commits and the close's: the damage is not read
        with pytest.raises(capsule.CorruptError):
            cap.timeline(limit=6)
    assert [e["summary"].split(": ")[1] for e in newest["events"]] == ["1 record (memory 1)"] * 3 + ["0 records (index, snapshot)"]


def test_state_and_beliefs_mark_memories_whose_ttl_ran_out(tmp_path: Path) -> None:
    # questions review: state and beliefs listed an expired memory as a current belief, unmarked,
    # while list and search left it out. Liveness ignores ttl (13.1); the text now says which.
    s, t = 1_000_000_000, 1_700_000_000 * 1_000_000_000  # commits in 2023
    f = tmp_path / "t.capsule"
    with capsule.create(f, clock=lambda: t) as cap, cap.commit() as tx:
        tx.remember("door code 1234", ttl=10 * s, time=t - 60 * s)  # ran out before the commit
        tx.remember("wifi is guest-5", ttl=3600 * s, time=t)  # ran out an hour after it
        tx.remember("lasting")
    view = _cli("state", str(f), "--at", "1").stdout  # a view: judged at its commit's time
    assert "3 memories (1 expired: live, but left out of list and search)" in view
    assert "door code 1234 [expired]" in view and "wifi is guest-5 [expired]" not in view
    head = _cli("state", str(f)).stdout  # the head: judged now, as list and search do
    assert "3 memories (2 expired" in head and "wifi is guest-5 [expired]" in head
    bel = _cli("beliefs", str(f), "--at", "1").stdout
    assert "door code 1234 [expired]" in bel and "wifi is guest-5 [expired]" not in bel
    assert "lasting [expired]" not in _cli("beliefs", str(f)).stdout


def test_diff_compares_the_rules_in_force_at_each_end(tmp_path: Path) -> None:
    # 13.5 by the constraint fold at FROM and TO (a QA run found diff listing the constraint
    # records committed in between): a rollback that brings a revoked rule back, or lifts one,
    # changes the rules; a rule added and rolled back in between, or asserted again, does not
    key = capsule.generate_key()
    with capsule.create(tmp_path / "c.capsule") as cap:
        with cap.commit() as tx:
            tx.constrain("no weekend email", scope="comms")
            tx.constrain("rule kept", scope="x")
            tx.set_identity("agent", model="m1")
        cap.checkpoint("A", key=key)
        with cap.commit() as tx:
            tx.constrain("no weekend email", scope="comms", status="revoked")
            tx.constrain("brand-new rule", scope="ops")
            tx.set_identity("agent", model="m2")
        cap.checkpoint("B", key=key)
        cap.rollback("A", key=key)
        with cap.commit() as tx:
            tx.constrain("rule kept", scope="x")  # again, while active: no change
        with cap.commit() as tx:
            tx.constrain("a rule with a policy", rule={"action": "email.*"})
        cap.checkpoint("C", key=key)
        with cap.commit() as tx:
            tx.constrain("a rule with a policy", rule={"action": "email.*", "approvals": 1})  # same rule
        with cap.commit() as tx:
            tx.constrain("a rule with a policy", rule={"action": "pay.*"})  # another rule
        cap.checkpoint("D", key=key)
        back = cap.diff("B", "rollback-to-A").to_dict()
        same = cap.diff("A", "rollback-to-A").to_dict()
        c_d = cap.diff("C", "D").to_dict()
        a_c = cap.diff("A", "C").to_dict()
    assert [c["text"] for c in back["constraints"]["added"]] == ["no weekend email"]
    assert [c["text"] for c in back["constraints"]["revoked"]] == ["brand-new rule"]
    assert same["constraints"] == {"added": [], "revoked": []}  # added and rolled back in between
    assert [c["text"] for c in a_c["constraints"]["added"]] == ["a rule with a policy"]  # "rule kept" again: not
    assert [c["text"] for c in c_d["constraints"]["added"]] == ["a rule with a policy"]  # its rule changed
    assert c_d["constraints"]["revoked"] == []
    assert back["identity"]["from"] != back["identity"]["to"] and back["identity"]["changes"] == []
    out = subprocess.run([sys.executable, "-m", "capsule_cli.main", "diff", str(tmp_path / "c.capsule"), "--from", "B",
                          "--to", "rollback-to-A"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "identity" in line)
    assert "│ 1 " in row  # the identity in force changed by the rollback, with no identity record in between


def test_diff_counts_every_lifecycle_event(tmp_path: Path) -> None:
    # `lifecycle` lists at most `limit` events; `lifecycle_count` says how many there were (the
    # table printed the cut length, and the JSON had no total)
    key = capsule.generate_key()
    p = tmp_path / "l.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            ms = [tx.remember(f"m{i}") for i in range(30)]
            secret = tx.remember("the code is kestrel-7")
        cap.checkpoint("a", key=key)
        for m in ms:
            with cap.commit() as tx:
                tx.forget(m)
        with cap.commit() as tx:
            tx.redact(secret)
        cap.checkpoint("b", key=key)
        d = cap.diff("a", "b", limit=5).to_dict()
    assert len(d["lifecycle"]) == 5 and d["lifecycle_count"] == 31
    assert d["removed"]["count"] == 31
    assert "kestrel" not in json.dumps(d)
    out = subprocess.run([sys.executable, "-m", "capsule_cli.main", "diff", str(p), "--from", "a", "--to", "b",
                          "--limit", "5"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "kestrel" not in out.stdout
    assert "│ 31 " in next(line for line in out.stdout.splitlines() if "lifecycle" in line)


def test_audit_shows_the_approval_of_the_action_itself_and_which_rule_governs(tmp_path: Path) -> None:
    # 7.3.1: an approval of action_subject(key) lets a gated action run; audit must show it (a QA
    # run found it nowhere in the human or JSON output) and which rule matched the key
    key = capsule.generate_key()
    p = tmp_path / "g.capsule"
    with capsule.create(p) as cap:
        cap.checkpoint("keys", key=key)  # its keyset vouches for the approver (7.4)
        with cap.commit() as tx:
            tx.constrain("customer emails need an approval", rule={"action": "email.*"})
            tx.constrain("tickets are free", rule={"action": "ticket.*"})
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.42", lambda: 1)
        with cap.commit() as tx:
            tx.approve(capsule.action_subject("email.42"), key)
        cap.run_once("email.42", lambda: 1)
        with cap.commit() as tx:
            tx.approve(capsule.action_subject("email.42"), key)  # later: counts for no intent before it
        a = cap.audit("email.42").to_dict()
    assert [(x["verified"], x["before_intent"]) for x in a["approvals"]] == [(True, True), (True, False)]
    assert {c["text"]: c.get("governs") for c in a["constraints"]} == {
        "customer emails need an approval": True, "tickets are free": False}
    out = subprocess.run([sys.executable, "-m", "capsule_cli.main", "audit", str(p), "email.42"], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "approvals of the action itself: " in out.stdout and "verified" in out.stdout
    assert "(rule email.*: governs this key)" in out.stdout


def test_why_of_a_replacement_shows_the_event_that_made_it(tmp_path: Path) -> None:
    # 7.7.1: why and diff show the chain old -> new; from the new end why showed nothing (a QA run)
    p = tmp_path / "w.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            old = tx.remember("the rota is in the wiki")
            ev = tx.remember("confirmed by two people")
        with cap.commit() as tx:
            new = tx.supersede(old, "the rota is in PagerDuty", reason="moved", actor="ops-bot")
        with cap.commit() as tx:
            top = tx.promote(new, "validated", evidence=[ev], reason="confirmed twice")
        w_new = cap.why(new).to_dict()["root"]
        w_top = cap.why(top).to_dict()["root"]
        w_plain = cap.why(ev).to_dict()["root"]
    assert [(e["op"], e["records"], e["reason"], e["actor"]) for e in w_new["replaces"]] == [
        ("supersede", [old], "moved", "ops-bot")]
    assert [(e["op"], e["records"], e["evidence"]) for e in w_top["replaces"]] == [("promote", [new], [ev])]
    assert w_plain["replaces"] == []
    out = subprocess.run([sys.executable, "-m", "capsule_cli.main", "why", str(p), new[:12]], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert f"supersede: replaces {old[:12]}" in out.stdout and "(ops-bot): moved" in out.stdout
    assert f"promoted by {top[:12]}" in out.stdout  # the mark names the replacement and the reason
    assert "confirmed twice" in out.stdout


def test_why_keeps_every_id_of_a_deep_chain_in_view(tmp_path: Path) -> None:
    p = tmp_path / "deep.capsule"
    with capsule.create(p) as cap:
        prev = None
        ids = []
        for i in range(50):
            with cap.commit() as tx:
                obs = tx.remember(f"observation {i}: the nightly build failed again because the database was "
                                  "not reachable from the runner")
                prev = tx.decide(f"plan {i}: retry the build after moving the runner",
                                 evidence=[obs] + ([prev] if prev else []))
                ids.append(prev)
    out = subprocess.run([sys.executable, "-m", "capsule_cli.main", "why", str(p), ids[-1]], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "150"})
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "│ decision │" in line]
    assert len(rows) == 50
    assert all(any(d[:12] in line for d in ids) for line in rows), "a row of the chain lost its id"
