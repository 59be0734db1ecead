"""Findings of a hostile review of the day's own changes, each a regression test: verify
--policy after a compaction, two jumping AgentLoops on one handle, a task event moved a
nanosecond into a lease's end, put --batch line numbers and blank lines, the two-file diff's
constraints, audit of an NFD key, and approvals whose key the capsule does not hold."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

import capsule
from capsule import AgentLoop


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_verify_policy_of_a_compacted_file_judges_inherited_intents_in_the_parent(tmp_path: Path) -> None:
    # the compacted file copies the keyset chain after the inherited records, so in place an intent
    # the parent allowed (an approval of its own subject by the keyset's key) read as a violation
    key = capsule.generate_key()
    p = tmp_path / "p.capsule"
    with capsule.create(p) as cap:
        cap.checkpoint("keys", key=key)
        with cap.commit() as tx:
            tx.constrain("mail needs an approval", rule={"action": "email.*"})
            tx.approve(capsule.action_subject("email.send:42"), key)
        cap.run_once("email.send:42", lambda: "sent")
    assert capsule.verify(p, policy=True).ok
    for keep in ("history", "live"):
        new = tmp_path / f"{keep}.capsule"
        capsule.compact(p, new, keep=keep)
        alone = capsule.verify(new, policy=True)
        assert alone.ok and any("judged in the parent" in w for w in alone.warnings)
        assert capsule.verify(new, policy=True, parent=p).ok
    # a violation in the parent fails the compacted file's check with the parent
    bad = tmp_path / "bad.capsule"
    with capsule.create(bad) as cap:
        with cap.commit() as tx:
            tx.constrain("mail needs an approval", rule={"action": "email.*"})
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.send:1", lambda: "sent")
    assert capsule.verify(bad, policy=True).ok  # the writer refused: nothing to judge


class _Sim:
    def __init__(self) -> None:
        self.t = 1_000

    def __call__(self) -> int:
        return self.t

    def advance_to(self, t: int) -> None:
        self.t = max(self.t, t)


def test_a_jumping_loop_does_not_move_the_clock_past_a_siblings_lease(tmp_path: Path) -> None:
    # loop 2, idle, took loop 1's live lease expiry for idle time, jumped the shared clock past
    # it and ran the task again; loop 1's completion was refused
    clk = _Sim()
    runs: list[str] = []
    with capsule.create(tmp_path / "j.capsule", clock=clk) as cap:
        cap.tasks.add("A", name="slow")
        cap.tasks.add("B", name="slow", not_before=10**15)  # due later: a reason to jump
        started = threading.Event()

        def slow(step: object) -> str:
            runs.append(step.name)  # type: ignore[attr-defined]
            started.set()
            time.sleep(0.2)
            return "ok"

        res: dict[str, object] = {}

        def go(worker: str) -> None:
            if worker == "w2":
                started.wait(5)
            res[worker] = AgentLoop(cap, {"slow": slow}, worker=worker, lease=60 * 10**9,
                                    jump_when_idle=True).run()

        threads = [threading.Thread(target=go, args=(w,)) for w in ("w1", "w2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(runs) == ["A", "B"]  # each ran once
        assert all(not r.lost for r in res.values())  # type: ignore[attr-defined]
        assert {t.status for t in cap.tasks.queue().tasks.values()} == {"done"}


def test_a_task_event_moved_a_nanosecond_is_checked_at_its_own_time(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # under a fixed clock a repeated fail moves a nanosecond later, where a 1 ns lease has ended:
    # it was checked at the old time, written, and then refused (and skipped by the fold)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    p = tmp_path / "n.capsule"
    with capsule.create(p) as cap:
        cap.tasks.add("t", max_attempts=5, backoff=0)
        cap.tasks.claim("t", "w", lease=2)
        cap.tasks.fail("t", "w", "boom")
        cap.tasks.claim("t", "w", lease=1)
        before = p.read_bytes()
        with pytest.raises(capsule.UsageError):
            cap.tasks.fail("t", "w", "boom")  # the same bytes as the first: at T+1 the lease is over
        assert p.read_bytes() == before
        state = cap.tasks.queue().tasks["t"]
    with capsule.open(p) as cap:
        again = cap.tasks.queue().tasks["t"]
    assert (state.status, state.failures) == (again.status, again.failures) == ("claimed", 1)


def test_put_batch_names_the_bad_line_and_blank_lines_are_not_records(tmp_path: Path) -> None:
    p = tmp_path / "b.capsule"
    assert _cli("init", str(p)).returncode == 0
    body = '{"text": "a"}\n{"text": "b", "bogus": 1}\n{"text": "c"}\n{"text": "d"}\n'
    one = _cli("put", str(p), "--jsonl", "-", stdin=body)
    batched = _cli("put", str(p), "--jsonl", "-", "--batch", "4", stdin=body)
    assert "stdin line 2: unknown memory field(s): bogus" in one.stderr
    assert "stdin line 2: unknown memory field(s): bogus" in batched.stderr
    later = _cli("put", str(p), "--jsonl", "-", "--batch", "2", stdin='{"text": "e"}\n{"text": "f"}\n{"text": 1}\n')
    assert later.returncode == 1 and "stdin line 3" in later.stderr
    assert "2 records in the batches before this one are committed and stay" in later.stderr
    import io

    from capsule.ingest.jsonl import JsonLines

    lines = JsonLines(io.BytesIO(b'{"text": "x"}\n' + b"\n" * 50 + b'{"text": "y"}\n'), max_lines=2)
    assert len(list(lines)) == 2  # blank lines hold nothing: they count toward no bound


def test_two_file_diff_counts_a_rule_asserted_again_as_no_change(tmp_path: Path) -> None:
    import shutil

    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.constrain("rule kept", scope="x", rule={"action": "email.*"})
        tx.constrain("rule changed", scope="x", rule={"action": "pay.*"})
    shutil.copyfile(a, b)
    with capsule.open(b, "a") as cap, cap.commit() as tx:
        tx.constrain("rule kept", scope="x", rule={"action": "email.*"})  # again, the same rule
        tx.constrain("rule changed", scope="x", rule={"action": "refund.*"})
    with capsule.open(a) as ca, capsule.open(b) as cb:
        d = ca.diff(cb).to_dict()
    assert [c["text"] for c in d["constraints"]["added"]] == ["rule changed"]
    assert d["constraints"]["revoked"] == []


def test_audit_reads_the_key_as_nfc_and_says_when_an_approval_cannot_be_checked(tmp_path: Path) -> None:
    p = tmp_path / "k.capsule"
    nfd = unicodedata.normalize("NFD", "mail.café")
    stranger = capsule.generate_key()  # a key the capsule publishes nowhere
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            d = tx.decide("send it")
            tx.approve(d, stranger)
        cap.run_once(nfd, lambda: "sent", inputs={"decision": d})
        doc = cap.audit(nfd).to_dict()
        assert doc["status"] == "done"
        [ap] = doc["decisions"][0]["approvals"]
        assert ap["key_known"] is False and ap["signature_ok"] is False
    r = _cli("audit", str(p), nfd)
    assert r.returncode == 0 and "key unknown" in r.stdout and "BAD" not in r.stdout
    assert json.loads(_cli("audit", str(p), unicodedata.normalize("NFC", nfd), "--json").stdout)["status"] == "done"


@pytest.mark.parametrize("mode", ["hide", "twice"])
def test_the_live_records_plan_refuses_tables_that_hide_or_repeat_a_record(tmp_path: Path, mode: str) -> None:
    # a writer bug (hash-valid tables that name the wrong ids): a live memory's entry naming the
    # forget event hid it from `state`, or a dead record's entry naming it listed it twice
    import numpy as np

    from capsule.format import writer

    p = tmp_path / f"{mode}.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            keep = tx.remember("keeper", time=1)
            tx.remember("keeper two", time=2)
            doomed = [tx.remember(f"doomed {i}", time=10 + i) for i in range(50)]
        with cap.commit() as tx:
            ev = tx.lifecycle("forget", drop=doomed)
        orig = writer._tables

        def forged(emit: object, ids: object, frames: object, slots: object, cap_: object) -> object:
            ids, frames, slots = np.array(ids), np.array(frames), np.array(slots)
            raw = [bytes(x) for x in ids.view("V32")]
            j = raw.index(bytes.fromhex(keep))
            if mode == "hide":
                ids[j] = np.frombuffer(bytes.fromhex(ev), ids.dtype)[0]
            else:
                d = raw.index(bytes.fromhex(doomed[0]))
                ids[d], frames[d], slots[d] = ids[j], frames[j], slots[j]
            return orig(emit, ids, frames, slots, cap_)

        writer._tables = forged  # type: ignore[assignment]
        try:
            cap._write_commit([], force_index=True)
        finally:
            writer._tables = orig
    with capsule.open(p) as cap, pytest.raises(capsule.CorruptError, match="one entry for each committed record"):
        cap.state()
    assert not capsule.verify(p).ok


def test_verify_policy_with_the_parent_judges_only_the_inherited_intents(tmp_path: Path) -> None:
    # the parent went on after the compaction with an intent the compacted file does not hold: it
    # failed the unchanged compacted file
    from capsule.run.actions import Action

    key = capsule.generate_key()
    p, c = tmp_path / "p.capsule", tmp_path / "c.capsule"
    with capsule.create(p) as cap:
        cap.checkpoint("keys", key=key)
        with cap.commit() as tx:
            tx.constrain("mail needs approval", rule={"action": "email.*"})
            tx.approve(capsule.action_subject("email.send:1"), key)
        cap.run_once("email.send:1", lambda: "ok")
    capsule.compact(p, c, keep="live")
    assert capsule.verify(c, policy=True, parent=p).ok
    with capsule.open(p, "a") as cap, cap.commit() as tx:  # a forged intent the parent holds later
        tx._put(Action.build(time=cap.clock(), key="email.send:999", phase="intent", attempt=1))
    assert not capsule.verify(p, policy=True).ok
    assert capsule.verify(c, policy=True, parent=p).ok


def test_a_view_named_by_a_time_ago(tmp_path: Path) -> None:
    # "what changed since yesterday": --at/--from/--to take `N s|m|h|d|w ago`, `yesterday`, `now`
    day = 86_400 * 10**9
    t = [1_767_225_600 * 10**9]
    p = tmp_path / "r.capsule"
    with capsule.create(p, clock=lambda: t[0]) as cap:
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"day {i}")
            t[0] += day
        t[0] -= day // 2  # now: half a day after the last commit
        assert cap.resolve("now").commits == cap.commit_count
        assert len(cap.view("yesterday")) == 2 and len(cap.view("37h ago")) == 1 and len(cap.view("2 d ago")) == 1
        d = cap.diff("yesterday").to_dict()
        assert d["added"]["count"] == 1
        with pytest.raises(capsule.NotFound):
            cap.view("3w ago")
        with pytest.raises(capsule.UsageError, match="time ago"):
            cap.view("sometime ago")
        cap.checkpoint("yesterday", key=capsule.generate_key())  # a label of that name wins
        assert cap.resolve("yesterday").commits == cap.commit_count


def test_since_and_until_take_a_time_ago_too(tmp_path: Path) -> None:
    # views took 'yesterday' and '6h ago'; --since/--until of list and timeline refused them
    p = tmp_path / "s.capsule"
    assert _cli("init", str(p)).returncode == 0
    assert _cli("put", str(p), "--text", "fresh").returncode == 0
    listed = _cli("list", str(p), "--since", "yesterday", "--json")
    assert listed.returncode == 0 and [h["text"] for h in json.loads(listed.stdout)] == ["fresh"]
    assert json.loads(_cli("list", str(p), "--until", "2 d ago", "--json").stdout) == []
    tl = _cli("timeline", str(p), "--since", "1h ago", "--json")
    assert tl.returncode == 0 and json.loads(tl.stdout)["events"]
    bad = _cli("list", str(p), "--since", "soon")
    assert bad.returncode == 2 and "a time ago" in bad.stderr
