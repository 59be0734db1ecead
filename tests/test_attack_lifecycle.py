"""A hostile review of memory lifecycles and the valid-time view (spec 7.1, 7.7.1, 13.1, 13.6).

The promise under attack: a redacted payload is never returned (get, records, search, state,
the questions, the report, views from before the redaction, forks, rollbacks; library and
CLI); a lifecycle verb that is refused says so in one line and leaves the file byte-identical;
a hostile file (a forged event, a bad window) is refused or applied exactly as the spec says,
never a traceback; readers across a redaction (threads, another process); the valid-time
view at its boundaries, with ``--at``. Each fix found here has its regression test below
(named in the docstring).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.format import canonical as canon
from capsule.format.records import record_id
from capsule.questions._lifecycle import fold_of
from capsule.state.fold import fold, fold_store
from tests.clocks import Clock

SECRET = "hunter2-\u00e9-SECRET"


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(Path(sys.executable).with_name("capsule")), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def one_line_error(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode not in (0, 70), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def forge(cap: capsule.Capsule, *docs: dict[str, Any]) -> list[bytes]:
    """Commit hand-made records through the store's writer, past every check the verbs make
    (the reference writer would refuse them): what a hostile or buggy writer can leave."""
    items = []
    for d in docs:
        data = canon.encode(d)
        items.append((record_id(d["kind"], data), d["kind"], data))
    cap._write_commit(items)
    return [rid for rid, _, _ in items]


def revert(cap: capsule.Capsule, **fields: Any) -> dict[str, Any]:
    return {"kind": "revert", "time": cap.clock(), "after": bytes.fromhex(cap.root), **fields}


@pytest.fixture
def redacted_file(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A memory, a decision and a note holding the secret, checkpoint ``before``, then all
    three redacted; a live decision whose evidence is the redacted memory."""
    p = tmp_path / "r.capsule"
    key = capsule.generate_key()
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            m = tx.remember(f"memory {SECRET}", tags=["ops"], embedding=[1.0, 0.0])
            d = tx.decide(f"decision {SECRET}", rationale=SECRET)
            n = tx.note(f"note {SECRET}")
            keep = tx.remember("kept alpha", embedding=[0.9, 0.1])
            live = tx.decide("ship", evidence=[m, keep])
        cap.checkpoint("before", key=key)
        with cap.commit() as tx:
            for x in (m, d, n):
                tx.redact(x, reason="a secret", actor="alice")
    yield p, {"m": m, "d": d, "n": n, "keep": keep, "live": live}


# --- F1: `report` of a view from before a redaction crashed ----------------------------------


def test_report_of_a_view_before_a_redaction_is_not_an_internal_error(
        redacted_file: tuple[Path, dict[str, str]]) -> None:
    """F1 (fixed in capsule/report/report.py): the state of a view from before a redaction
    lists a redacted decision by id and kind only; the report sorted decisions by ``time`` and
    raised KeyError (CLI exit 70, "internal error"). It now counts the decision, draws none."""
    p, ids = redacted_file
    with capsule.open(p, at="before") as v:
        from capsule.report.report import report

        doc = report(v)
    assert doc["decisions"]["total"] == 2 and [g["id"] for g in doc["decisions"]["graphs"]] == [ids["live"]]
    assert SECRET not in json.dumps(doc)
    out = p.parent / "r.html"
    for args in (["--json"], ["-o", str(out)]):
        r = cli("report", str(p), "--at", "before", *args)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout
    assert SECRET not in out.read_text()


# --- F2: a search in a view from before a redaction returned fewer than k ---------------------


def test_search_in_a_view_before_a_redaction_still_returns_k(tmp_path: Path) -> None:
    """F2 (fixed in capsule/handle/searching.py): the redacted hits of a view were dropped
    after the top k was taken, so a view holding k live matches returned fewer (1 of 3 here)."""
    p = tmp_path / "k.capsule"
    key = capsule.generate_key()
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = [tx.remember(f"alpha {SECRET if i < 2 else 'plain'} {i}", embedding=[1.0, i / 10])
                   for i in range(5)]
        cap.checkpoint("before", key=key)
        with cap.commit() as tx:
            tx.redact(ids[0])
            tx.redact(ids[1])
        with cap.view("before") as v:
            for hits in (v.search("alpha", k=3, mode="lexical"), v.search(vector=[1.0, 0.0], k=3),
                         v.search("alpha", k=3, mode="lexical", valid_at=0), v.search(k=3, kind="memory")):
                assert sorted(h.id for h in hits) == sorted(ids[2:]), hits
            assert len(v.search("alpha", k=10, mode="lexical")) == 3  # no more than there are


# --- no read path returns a redacted payload -----------------------------------------------------


def test_library_reads_never_return_a_redacted_payload(redacted_file: tuple[Path, dict[str, str]],
                                                       tmp_path: Path) -> None:
    p, ids = redacted_file
    with capsule.open(p) as cap:
        seen: list[str] = []
        for h in (cap, cap.view("before"), cap.view(1)):
            for rid in ("m", "d", "n"):
                with pytest.raises(capsule.Redacted):
                    h.get(ids[rid])
                with pytest.raises(capsule.Redacted):
                    h.get(ids[rid][:8])
                with pytest.raises(capsule.Redacted):
                    h.why(ids[rid])
            seen += [repr(r.to_dict()) for r in h.records()]
            seen += [repr(r.to_dict()) for r in h.records(valid_at=0)]
            seen += [json.dumps(h.state().to_dict()), json.dumps(h.state(valid_at=5).to_dict())]
            seen += [json.dumps(h.beliefs().to_dict()), json.dumps(h.why(ids["live"]).to_dict())]
            seen += [json.dumps(h.timeline().to_dict())]
            seen += [repr(x) for x in h.search("memory decision note hunter2", k=20, mode="lexical")]
            seen += [repr(x) for x in h.search(vector=[1.0, 0.0], k=20)]
            seen += [repr(x) for x in h.search(k=50)]
        seen += [json.dumps(cap.diff(0, cap.log()[-1].seq).to_dict())]
    assert not [s for s in seen if SECRET in s]
    # a fork at a commit where they were live copies none of them (7.7.1)
    with capsule.fork(p, tmp_path / "f.capsule", at="before") as child:
        assert {r.id for r in child.records()} == {ids["keep"], ids["live"]}
        assert not any(SECRET in repr(r.to_dict()) for r in child.records())


def test_rollback_across_a_redaction_never_restores_it(redacted_file: tuple[Path, dict[str, str]]) -> None:
    p, ids = redacted_file
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:
            tx.forget(ids["keep"])
        assert cap.rollback("before") is not None
        live = {m["id"] for ms in cap.state().memories.values() for m in ms}
        assert live == {ids["keep"]}  # the forgotten one is back, the redacted one is not
        for x in ("m", "d", "n"):
            with pytest.raises(capsule.Redacted):
                cap.get(ids[x])
        assert cap.rollback("before") is None  # already there but for the redactions: nothing written


CLI_READS = [["state", "--json"], ["state"], ["beliefs", "--json"], ["list", "--json"], ["records"],
             ["search", "hunter2", "--json"], ["search", "memory", "--mode", "lexical"], ["timeline", "--json"],
             ["report", "--json"], ["state", "--valid-at", "1970-01-01", "--json"],
             ["list", "--valid-at", "2000-01-01", "--json"], ["search", "note", "--valid-at", "0", "--json"]]


@pytest.mark.parametrize("at", [[], ["--at", "before"], ["--at", "1"]])
def test_cli_reads_never_print_a_redacted_payload(redacted_file: tuple[Path, dict[str, str]],
                                                  at: list[str]) -> None:
    p, ids = redacted_file
    before = digest(p)
    for args in CLI_READS:
        r = cli(args[0], str(p), *args[1:], *at)
        assert r.returncode == 0, (args, r.stderr)
        assert SECRET not in r.stdout + r.stderr, args
    for rid in ("m", "d", "n"):
        for cmd in ("get", "why"):
            r = cli(cmd, str(p), ids[rid][:10], *at)
            one_line_error(r)
            assert "was redacted" in r.stderr and SECRET not in r.stdout + r.stderr
    r = cli("why", str(p), ids["live"], "--json", *at)
    assert r.returncode == 0 and SECRET not in r.stdout
    assert digest(p) == before  # a file opened for reading is never written


# --- refused verbs: one line, nothing written ----------------------------------------------------


@pytest.fixture
def busy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    p = tmp_path / "b.capsule"
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = {"m": tx.remember("mem"), "v": tx.remember("top", tier="validated"), "d": tx.decide("dec"),
                   "n": tx.note("note"), "c": tx.constrain("no deploys on friday"),
                   "i": tx.set_identity("agent-1"), "f": tx.remember("to forget"), "r": tx.remember("to redact")}
        with cap.commit() as tx:
            ids["ev_f"] = tx.forget(ids["f"])
        with cap.commit() as tx:
            ids["ev_r"] = tx.redact(ids["r"])
    return p, ids


REFUSED = [
    (["forget", "{f}"], "not live"), (["forget", "{r}"], "already redacted"), (["redact", "{r}"], "already redacted"),
    (["supersede", "{d}", "--text", "x"], "is a decision"), (["supersede", "{n}", "--text", "x"], "is a note"),
    (["supersede", "{f}", "--text", "x"], "not live"), (["supersede", "{r}", "--text", "x"], "already redacted"),
    (["forget", "{c}"], "is a constraint"), (["redact", "{c}"], "is a constraint"), (["redact", "{i}"], "is an identity"),
    (["forget", "{ev_f}"], "is a revert"), (["redact", "{ev_r}"], "is a revert"),
    (["promote", "{d}", "--tier", "validated"], "is a decision"), (["promote", "{m}", "--tier", "working"], "already"),
    (["promote", "{m}", "--tier", "gold"], "tier must be"), (["demote", "{m}", "--tier", "validated"], "higher"),
    (["promote", "{r}", "--tier", "validated"], "already redacted"), (["forget", "ffffffff"], "no record"),
    (["forget", "zz"], "record id"), (["redact", "00" * 32], "no record"),
    (["supersede", "{m}", "--text", "x", "--evidence", "abcdef012345"], "no record"),
    (["promote", "{m}", "--tier", "validated", "--evidence", "{r}"], None),  # redacted evidence: allowed
]


@pytest.mark.parametrize("args,words", REFUSED, ids=[" ".join(a[:2]) + (f" {w}" if w else "") for a, w in REFUSED])
def test_refused_verbs_are_one_line_and_write_nothing(busy: tuple[Path, dict[str, str]], args: list[str],
                                                      words: str | None) -> None:
    p, ids = busy
    before = digest(p)
    r = cli(args[0], str(p), *[a.format(**ids) for a in args[1:]])
    if words is None:
        assert r.returncode == 0, r.stderr
        return
    one_line_error(r)
    assert words in r.stderr, r.stderr
    assert digest(p) == before


# --- hostile files: forged events ----------------------------------------------------------------


def _hostile_base(p: Path) -> tuple[capsule.Capsule, dict[str, bytes]]:
    cap = capsule.create(p, clock=Clock())
    with cap.commit() as tx:
        ids = {"m": tx.remember(f"m {SECRET}"), "m2": tx.remember("other"), "d": tx.decide("dec"), "n": tx.note("n"),
               "c": tx.constrain("rule")}
    return cap, {k: bytes.fromhex(v) for k, v in ids.items()}


SCHEMA: dict[str, Callable[[dict[str, bytes]], dict[str, Any]]] = {  # 7.7.1: a reader MUST refuse each (a record that does not fit its kind)
    "reason without op": lambda ids: {"drop": [ids["m"]], "reason": "x"},
    "op with to": lambda ids: {"op": "forget", "drop": [ids["m"]], "to": b"\0" * 32},
    "op without drop": lambda ids: {"op": "redact"},
    "forget with by": lambda ids: {"op": "forget", "drop": [ids["m"]], "by": [ids["m2"]]},
    "redact with restore": lambda ids: {"op": "redact", "drop": [ids["m"]], "restore": [ids["m2"]]},
    "supersede without by": lambda ids: {"op": "supersede", "drop": [ids["m"]]},
    "promote two drops": lambda ids: {"op": "promote", "drop": sorted([ids["m"], ids["d"]]), "by": [ids["m2"]]},
    "restore not in by": lambda ids: {"op": "supersede", "drop": [ids["m"]], "by": [ids["m2"]], "restore": [ids["n"]]},
    "by and drop": lambda ids: {"op": "supersede", "drop": [ids["m"]], "by": [ids["m"]]},
    "unknown op": lambda ids: {"op": "obliterate", "drop": [ids["m"]]},
    "op nil": lambda ids: {"op": None, "drop": [ids["m"]]},
    "by not ids": lambda ids: {"op": "supersede", "drop": [ids["m"]], "by": ["x"]},
}


@pytest.mark.parametrize("name", list(SCHEMA))
def test_a_forged_event_breaking_the_schema_is_refused_everywhere(tmp_path: Path, name: str) -> None:
    p = tmp_path / "h.capsule"
    cap, ids = _hostile_base(p)
    with cap:
        forge(cap, revert(cap, **SCHEMA[name](ids)))
    before = digest(p)
    with pytest.raises(capsule.DataError), capsule.open(p) as c:
        c.state()
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "record-schema"
    # (timeline decodes only the reverts with an `op`: 13.5, questions are not verification)
    timeline = [] if name == "reason without op" else [["timeline"]]
    for args in (["state"], ["list", "--json"], *timeline, ["report", "--json"], ["state", "--valid-at", "0"],
                 ["verify"], ["forget", ids["m2"].hex()]):
        r = cli(args[0], str(p), *args[1:])
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        one_line_error(r)
    assert digest(p) == before


def _reader_sees(p: Path) -> tuple[set[str], set[str], str]:
    """(live ids, redacted ids) by the fast fold, checked against the slow fold and the CLI."""
    with capsule.open(p) as c:
        fast = fold_store(c._store)
        slow = fold(c._store.records())
        assert fast.to_dict() == slow.to_dict() and sorted(fast.live) == sorted(slow.live)
        red = {x.hex() for x in fold_of(c._store).redacted}
        st = c.state().to_dict()
        text = json.dumps(st) + repr([r.to_dict() for r in c.records()]) + repr(c.search("m", k=50))
        return {x.hex() for x in fast.live}, red, text


def test_forged_events_the_reader_applies_as_13_1_defines(tmp_path: Path) -> None:
    """Rule-breaking events a reader does not refuse (7.7.1): applied, with sticky redaction."""
    p = tmp_path / "h.capsule"
    cap, ids = _hostile_base(p)
    never = [hashlib.sha256(b"never %d" % i).digest() for i in range(2)]
    with cap:
        forge(cap, revert(cap, op="redact", drop=sorted(never)))  # ids never stored
        forge(cap, revert(cap, op="redact", drop=[ids["m"]]))
        forge(cap, revert(cap, op="redact", drop=[ids["m"]]))  # redacted twice
        forge(cap, revert(cap, restore=[ids["m"]]))  # a restore of a redacted id changes nothing
        forge(cap, revert(cap, op="supersede", drop=[ids["m2"]], by=[ids["m"]], restore=[ids["m"]]))
        forge(cap, revert(cap, op="forget", drop=[ids["n"]]), revert(cap, op="forget", drop=[ids["n"]]))  # dead
        forge(cap, revert(cap, op="supersede", drop=[ids["d"]], by=[ids["c"]]))  # a decision by a constraint
        # a memory stored after a redact named it: its bytes stay dead and unread
        late = {"kind": "memory", "time": 7, "text": f"late {SECRET}"}
        late_id = record_id("memory", canon.encode(late))
        forge(cap, revert(cap, op="redact", drop=[late_id]))
        forge(cap, late)
    live, red, text = _reader_sees(p)
    assert live == {ids["c"].hex()}
    assert red == {x.hex() for x in [*never, ids["m"], late_id]}
    assert SECRET not in text
    # readers apply what is there; verify refuses the event whose targets break 7.7.1 (a decision
    # superseded by a constraint), and only that check: every other forged event passes it
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error["check"] == "lifecycle-target", rep.first_error
    before = digest(p)
    for rid in (ids["m"], late_id):
        r = cli("get", str(p), rid.hex())
        one_line_error(r)
        assert "was redacted" in r.stderr and SECRET not in r.stderr
    # and the reference writer still refuses to store the bytes again
    with capsule.open(p, "a") as w, pytest.raises(capsule.UsageError), w.commit() as tx:
        tx.put_value(late)
    assert digest(p) == before


def test_a_huge_drop_list_is_read_in_bounded_time(tmp_path: Path) -> None:
    p = tmp_path / "h.capsule"
    cap, ids = _hostile_base(p)
    drop = sorted([hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(100_000)] + [ids["m"]])
    with cap:
        forge(cap, revert(cap, op="redact", drop=drop))
    live, red, text = _reader_sees(p)
    assert ids["m"].hex() not in live and len(red) == len(drop) and SECRET not in text
    r = cli("state", str(p), "--valid-at", "0", "--json")
    assert r.returncode == 0 and SECRET not in r.stdout


@pytest.mark.parametrize("bad", [{"valid_from": None}, {"valid_from": 1.0}, {"valid_from": True},
                                 {"valid_to": "5"}, {"valid_from": -1}, {"valid_to": 1 << 63},
                                 {"valid_from": 5, "valid_to": 5}, {"valid_from": 6, "valid_to": 5},
                                 {"valid_from": [1]}, {"ttl": 0}])
def test_a_forged_bad_window_is_refused_on_every_valid_time_path(tmp_path: Path, bad: dict[str, Any]) -> None:
    p = tmp_path / "w.capsule"
    with capsule.create(p, clock=Clock()) as cap:
        with cap.commit() as tx:
            tx.remember("fine", valid_from=3)
        forge(cap, {"kind": "memory", "text": "bad window", "time": 10, **bad})
    before = digest(p)
    with capsule.open(p) as c:
        for read in (lambda: c.state(valid_at=4), lambda: list(c.records(valid_at=4)),
                     lambda: c.search("window", valid_at=4), lambda: c.state()):
            with pytest.raises(capsule.DataError):
                read()
    for args in (["state", "--valid-at", "4"], ["list", "--valid-at", "4", "--json"],
                 ["search", "window", "--valid-at", "4"], ["verify"]):
        r = cli(args[0], str(p), *args[1:])
        assert r.returncode == 1, (args, r.stderr)
        one_line_error(r)
    assert digest(p) == before


# --- readers across a redaction ----------------------------------------------------------------


def test_threads_reading_while_the_writer_redacts(tmp_path: Path) -> None:
    """Readers sharing the writer's handle: a read that starts after the redaction commits never
    returns the payload; no read fails with anything but Redacted."""
    p = tmp_path / "t.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            targets = [tx.remember(f"secret {i} {SECRET}") for i in range(12)]
            for i in range(50):
                tx.remember(f"filler {i}")
        first = cap.log()[-1].seq
        done: set[str] = set()  # redactions committed (added after each commit returns)
        stop = threading.Event()
        errors: list[str] = []

        def reader() -> None:
            try:
                read()
            except Exception as e:  # noqa: BLE001 -- a thread's failure must reach the assert
                errors.append(repr(e))

        def read() -> None:
            while not stop.is_set():
                committed = set(done)
                for t in targets:
                    try:
                        cap.get(t)
                        if t in committed:
                            errors.append(f"get {t[:8]} after its redaction")
                    except capsule.Redacted:
                        pass
                    except Exception as e:  # noqa: BLE001 -- any other failure is the finding
                        errors.append(repr(e))
                shown = json.dumps(cap.state().to_dict()) + repr([r.to_dict() for r in cap.records()])
                shown += repr(cap.search("secret", k=20, mode="lexical"))
                with cap.view(first) as then:  # a commit before every redaction: live there, payload withheld
                    assert len(then) == 62
                    shown += json.dumps(then.state().to_dict()) + repr(then.search("secret", k=20))
                    for t in committed:
                        try:
                            then.get(t)
                            errors.append(f"view get {t[:8]} after its redaction")
                        except capsule.Redacted:
                            pass
                errors.extend(f"{t[:8]} shown after its redaction" for t in committed
                              if f"secret {targets.index(t)} {SECRET}" in shown)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for th in threads:
            th.start()
        try:
            for t in targets:
                with cap.commit() as tx:
                    tx.redact(t)
                done.add(t)
        finally:
            stop.set()
            for th in threads:
                th.join(60)
        assert not errors, errors[:5]


READER = r"""
import json, sys, capsule
p, rid = sys.argv[1], sys.argv[2]
with capsule.open(p) as r:
    print(r.get(rid).text.split()[0], len(r.search("payload", mode="lexical")), r.state().memories["working"][0]["text"].split()[0], flush=True)
    sys.stdin.readline()  # the writer redacts now
    print(r.get(rid).text.split()[0], flush=True)  # a snapshot is fixed until refresh
    print(r.refresh(), flush=True)
    for h in (r, r.view(r.log()[-2].seq)):
        try:
            h.get(rid)
            print("LEAK", flush=True)
        except capsule.Redacted:
            print("redacted", len(h.search("payload", mode="lexical")), "payload" in json.dumps(h.state().to_dict()),
                  flush=True)
"""


def test_a_reader_process_open_across_a_redaction(tmp_path: Path) -> None:
    p = tmp_path / "x.capsule"
    with capsule.create(p) as w:
        with w.commit() as tx:
            rid = tx.remember(f"payload {SECRET}")
        proc = subprocess.Popen([sys.executable, "-c", READER, str(p), rid], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().split() == ["payload", "1", "payload"]
        with w.commit() as tx:
            tx.redact(rid)
        out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["payload", "True", "redacted", "0", "False", "redacted", "0", "False"], out


# --- the valid-time view at its boundaries, with --at ------------------------------------------


@pytest.fixture
def windows(tmp_path: Path) -> Iterator[tuple[capsule.Capsule, dict[str, str]]]:
    key = capsule.generate_key()
    with capsule.create(tmp_path / "vt.capsule", clock=Clock()) as cap:
        with cap.commit() as tx:
            ids = {"a": tx.remember("alpha window", valid_from=100, valid_to=200),
                   "b": tx.remember("alpha ttl", time=1000, ttl=50),
                   "c": tx.remember("alpha old", valid_from=10),
                   "e": tx.remember("alpha wrong", valid_from=10),
                   "s": tx.remember(f"alpha {SECRET}", valid_from=100, valid_to=200)}
        cap.checkpoint("before", key=key)
        with cap.commit() as tx:
            ids["d"] = tx.supersede(ids["c"], "alpha new", valid_from=300)  # a world change at 300
            ids["f"] = tx.supersede(ids["e"], "alpha right")  # a correction: e was never true
            tx.redact(ids["s"])
        yield cap, ids


NOW = {9: "bf", 10: "bcf", 99: "bcf", 100: "abcf", 199: "abcf", 200: "bcf", 299: "bcf", 300: "bdf", 1049: "bdf",
       1050: "df"}
THEN = {9: "b", 10: "bce", 100: "abce", 199: "abce", 200: "bce", 300: "bce", 1049: "bce", 1050: "ce"}


def _view_names(h: capsule.Capsule, ids: dict[str, str], t: int) -> set[str]:
    name = {v: k for k, v in ids.items()}
    recs = {name[r.id] for r in h.records(kind="memory", valid_at=t) if not getattr(r, "redacted", False)}
    state = {name[m["id"]] for ms in h.state(valid_at=t).memories.values() for m in ms if not m.get("redacted")}
    hits = {name[x.id] for x in h.search("alpha", k=20, mode="lexical", valid_at=t)}
    assert recs == state == hits, (t, recs, state, hits)
    return recs


def test_the_valid_time_view_at_its_boundaries(windows: tuple[capsule.Capsule, dict[str, str]]) -> None:
    """T == valid_from is in, T == valid_to and T == time + ttl are out (half-open windows,
    13.6); a world change cuts the old memory at the new one's valid_from; a correction hides
    it; ``--at`` before the events shows what was known then; the redacted one never shows."""
    cap, ids = windows
    for t, want in NOW.items():
        assert _view_names(cap, ids, t) == set(want), t
    with cap.view("before") as v:
        for t, want in THEN.items():
            assert _view_names(v, ids, t) == set(want), t
        st = v.state(valid_at=150).to_dict()
        assert SECRET not in json.dumps(st)
        assert {"id": ids["s"], "kind": "memory", "redacted": True} in st["memories"]["working"]


def test_cli_valid_at_with_at_at_the_boundaries(windows: tuple[capsule.Capsule, dict[str, str]]) -> None:
    cap, ids = windows
    p = str(cap.path)
    name = {v: k for k, v in ids.items()}
    for at, table in (([], NOW), (["--at", "before"], THEN)):
        for t in (100, 200, 300, 1050):
            r = cli("state", p, "--valid-at", str(t), "--json", *at)
            assert r.returncode == 0, r.stderr
            got = {name[m["id"]] for m in json.loads(r.stdout)["memories"]["working"] if "text" in m}
            assert got == set(table[t]), (at, t)
            assert SECRET not in r.stdout
            r = cli("list", p, "--valid-at", str(t), "--json", *at)
            assert r.returncode == 0 and SECRET not in r.stdout
            assert {name[x["id"]] for x in json.loads(r.stdout) if "text" in x} == set(table[t]), (at, t)


# --- F3: a `get` of a view cost every redaction in the file --------------------------------------


def test_get_in_a_view_does_not_cost_every_redaction(tmp_path: Path) -> None:
    """F3 (fixed in capsule/questions/_lifecycle.py ``redaction``, used by ``check_readable``):
    each ``get`` of a view holding a revert merged the view's redacted ids with the inherited
    ones into a new dict, O(redactions) per read: 2 ms a read with 200,000 redacted ids, so a
    walk over a view's records by id took minutes. Now two lookups."""
    p = tmp_path / "many.capsule"
    cap, ids = _hostile_base(p)
    with cap:
        with cap.commit() as tx:
            keep = [tx.remember(f"k{i}") for i in range(1500)]
        with cap.commit() as tx:
            tx.forget(ids["n"])  # the view below holds a revert of its own
        at = cap.log()[-1].seq
        forge(cap, revert(cap, op="redact",
                          drop=sorted(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(200_000))))
    with capsule.open(p) as c, c.view(at) as v:
        for h in (c, v):  # warm both: the same pages, the same decoders
            for k in keep:
                h.get(k)
        t0 = time.perf_counter()
        for k in keep:
            c.get(k)
        t1 = time.perf_counter()
        for k in keep:
            v.get(k)
        t2 = time.perf_counter()
        with pytest.raises(capsule.NotFound):
            v.get(ids["m"].hex()[:8] + "0" * 56)
    assert t2 - t1 < 10 * (t1 - t0) + 0.5, (t1 - t0, t2 - t1)


# --- F4, F5: a forged redact naming an event or a task record stopped rollback and the task queue --


def test_rollback_applies_a_revert_that_a_forged_redact_names(tmp_path: Path) -> None:
    """F4 (fixed in capsule/handle/capsule.py ``_rollback``): the rollback folded the live set
    from ``records()``, whose placeholder for a redacted revert has no ``drop``: exit 70,
    AttributeError. A redacted revert still applies (13.1); only its payload is withheld."""
    p = tmp_path / "rb.capsule"
    key = capsule.generate_key()
    cap, ids = _hostile_base(p)
    with cap:
        ck = cap.checkpoint("c0", key=key)
        [ev] = forge(cap, revert(cap, op="forget", drop=[ids["m"]]))
        forge(cap, revert(cap, op="redact", drop=[ev]))
        assert ids["m"].hex() not in {m["id"] for ms in cap.state().memories.values() for m in ms}
        assert cap.rollback("c0") is not None
        assert cap.state_root == ck.body.state_root.hex()  # m is back: nothing it needs was redacted
        assert cap.rollback("c0") is None
    with capsule.open(p, "a") as cap:
        forge(cap, revert(cap, op="forget", drop=[ids["m2"]]))
    r = cli("rollback", str(p), "--to", "c0")
    assert r.returncode == 0, r.stderr


def test_the_task_queue_reads_a_task_record_a_forged_redact_names(tmp_path: Path) -> None:
    """F5 (fixed in capsule/run/tasks.py): the queue folded ``records(kind="task")``, whose
    placeholder has no ``event``: `capsule tasks`, `beliefs` and `report` stopped with exit 70.
    The writer never redacts a task (7.7.1); a reader applies the liveness, and the queue, like
    the action journal, is a fold over every task record stored."""
    p = tmp_path / "t.capsule"
    cap, _ = _hostile_base(p)
    with cap:
        t = cap.tasks.add("water the plants")
        forge(cap, revert(cap, op="redact", drop=sorted(bytes.fromhex(r.id) for r in cap._store.records("task"))))
    with capsule.open(p) as c:
        assert [s.id for s in c.tasks.queue().tasks.values()] == [t]
    for args in (["tasks"], ["tasks", "--json"], ["beliefs", "--json"], ["report", "--json"]):
        r = cli(args[0], str(p), *args[1:])
        assert r.returncode == 0, (args, r.stderr)


# --- F6: a forged supersede of a note or decision brought it back in the valid-time view -----------


def test_a_dead_note_or_decision_stays_out_of_every_valid_time_view(tmp_path: Path) -> None:
    """F6 (fixed in capsule/state/fold.py ``fold_store`` and capsule/search/engine.py
    ``catalog_mask``): a forged ``supersede`` dropping a decision and a note, replaced by a
    memory with a ``valid_from``, put both back in ``state --valid-at T`` and ``search
    --valid-at T`` for every T before that valid_from, though 13.6 (1) lets T filter memories
    only (a record of another kind is in the view when it is live, and these are dead)."""
    p = tmp_path / "sd.capsule"
    cap, ids = _hostile_base(p)
    with cap:
        with cap.commit() as tx:
            new = bytes.fromhex(tx.remember("replacement", valid_from=300))
        forge(cap, revert(cap, op="supersede", drop=sorted([ids["d"], ids["n"]]), by=[new]))
    with capsule.open(p) as c:
        for t in (0, 100, 299, 300, 400):
            st = c.state(valid_at=t)
            assert st.decisions == [] and st.notes == [], t
            assert sorted(st.live) == sorted(c.state().live)
            for hits in (c.search("dec n rule", mode="lexical", valid_at=t), c.search(valid_at=t, k=50)):
                assert not {h.kind for h in hits} & {"decision", "note"}, (t, hits)
    r = cli("state", str(p), "--valid-at", "100", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"] == [], r.stdout
