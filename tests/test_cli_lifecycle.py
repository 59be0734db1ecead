"""``capsule forget / redact / supersede / promote / demote`` (spec 7.7.1) from the command line.

In-process (CliRunner) for the shapes and the refusals, each leaving the file byte-identical;
real subprocesses for what a user sees of a redacted record: its text appears in no output of
``get``, ``list``, ``search``, ``state --json``, ``timeline``, ``diff`` or ``why``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner, Result

import capsule

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
SECRET = "hunter2-the-root-password"
runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR")}
    env["COLUMNS"] = "200"
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    p = tmp_path / "c.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            ids = {"m": tx.remember("the staging db is db-1", tags=["ops"]), "s": tx.remember(SECRET),
                   "low": tx.remember("maybe flaky", tier="scratch"), "n": tx.note("a note")}
            ids["d"] = tx.decide("ship", evidence=[ids["s"]])
        cap.checkpoint("a", key=capsule.generate_key())
    return p, ids


def test_verbs_json(made: tuple[Path, dict[str, str]]) -> None:
    p, ids = made
    r = invoke("supersede", p, ids["m"][:8], "--text", "the staging db is db-2", "--reason", "migrated",
               "--actor", "ops-bot", "--json")
    assert r.exit_code == 0, r.output
    sup = json.loads(r.stdout)
    assert (sup["op"], sup["records"]) == ("supersede", [ids["m"]]) and len(sup["new"]) == 64
    with capsule.open(p) as cap:
        new = cap.get(sup["new"])
        ev = cap.get(sup["event"])
    assert (new.text, new.tags, ev.reason, ev.actor) == ("the staging db is db-2", ("ops",), "migrated", "ops-bot")

    r = invoke("promote", p, ids["low"], "--tier", "validated", "--evidence", ids["n"][:6], "--json")
    pro = json.loads(r.stdout)
    assert r.exit_code == 0 and pro["op"] == "promote" and pro["records"] == [ids["low"]]
    r = invoke("demote", p, pro["new"], "--tier", "scratch", "--json")
    dem = json.loads(r.stdout)
    assert r.exit_code == 0 and dem["op"] == "demote" and dem["new"] == ids["low"]  # the stored one, restored

    r = invoke("forget", p, ids["n"], "--reason", "done", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["new"] is None
    r = invoke("redact", p, ids["s"][:10], "--actor", "alice")
    assert r.exit_code == 0 and r.stdout.startswith(f"redact {ids['s']}") and "event" in r.stdout
    with capsule.open(p) as cap:
        assert [e.op for e in cap.records(kind="revert")] == ["supersede", "promote", "demote", "forget", "redact"]
    assert capsule.verify(p).ok


@pytest.mark.parametrize("args,code,msg", [
    (("forget", "{p}", "ffffffff"), 2, "no record with id prefix"),
    (("forget", "{p}", "{d}"), 0, ""),  # a decision may be forgotten...
    (("supersede", "{p}", "{d}", "--text", "x"), 2, "is a decision; only a memory"),  # ...not superseded
    (("promote", "{p}", "{m}", "--tier", "working"), 2, "already working"),
    (("promote", "{p}", "{m}", "--tier", "gold"), 2, "tier must be one of"),
    (("demote", "{p}", "{low}", "--tier", "validated"), 2, "higher"),
    (("promote", "{p}", "{m}", "--tier", "validated", "--evidence", "eeeeeeee"), 2, "no record"),
    (("redact", "{p}", "{s}"), 0, ""),
    (("supersede", "{p}", "{m}", "--text", "x", "--valid-from", "garbage"), 2, "not an ISO-8601 time"),
    (("supersede", "{p}", "{m}", "--text", "x", "--valid-from", "2025-01-01", "--valid-to", "2024-01-01"), 2,
     "valid_from must be before valid_to"),
])
def test_refusals_are_one_line_and_write_nothing(made: tuple[Path, dict[str, str]], args: tuple[str, ...],
                                                 code: int, msg: str) -> None:
    p, ids = made
    argv = [a.format(p=p, **ids) for a in args]
    before = digest(p)
    r = invoke(*argv)
    assert r.exit_code == code, r.output
    if code:
        assert r.exception is None or isinstance(r.exception, SystemExit)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("capsule: error:") and msg in lines[0], r.stderr
        assert digest(p) == before
        return
    # the command worked once; the same again is refused, file unchanged
    after = digest(p)
    again = invoke(*argv)
    assert again.exit_code == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert ("already redacted" if argv[0] == "redact" else "not live") in again.stderr
    assert digest(p) == after


def test_redacted_text_is_in_no_output(made: tuple[Path, dict[str, str]]) -> None:
    p, ids = made
    cwd = p.parent
    r = run("redact", p, ids["s"], "--reason", "leaked", "--actor", "alice", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    g = run("get", p, ids["s"], cwd=cwd)
    assert g.returncode == 2 and g.stdout == ""
    assert g.stderr.count("\n") == 1 and "redacted" in g.stderr and "alice" in g.stderr and "leaked" in g.stderr
    outputs = [g.stderr]
    for argv in (("list", p, "--json"), ("search", p, "hunter2 root password", "--json"), ("state", p, "--json"),
                 ("state", p, "--at", "a", "--json"), ("get", p, ids["s"], "--at", "a")):
        res = run(*argv, cwd=cwd)  # what a user sees, through the real entry point
        assert "Traceback" not in res.stderr, (argv, res.stderr)
        outputs += [res.stdout, res.stderr]
    at = json.loads(outputs[-4])  # state --at a: the record was live then; its text is withheld
    assert {"id": ids["s"], "kind": "memory", "redacted": True} in at["memories"]["working"]
    for args in (("list", p), ("state", p), ("state", p, "--at", "a"), ("list", p, "--at", "a", "--json"),
                 ("timeline", p, "--json"), ("diff", p, "--from", "1", "--to", "a", "--json"),
                 ("why", p, ids["d"], "--json"), ("why", p, ids["d"]), ("why", p, ids["d"], "--at", "a"),
                 ("beliefs", p, "--at", "a"), ("beliefs", p, "--at", "a", "--json"), ("report", p, "--json")):
        r = invoke(*args)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        outputs += [r.stdout, r.stderr]
    assert all(SECRET not in o and "hunter2" not in o for o in outputs)
    before = digest(p)
    miss = run("supersede", p, ids["m"], cwd=cwd)  # typer's own usage error, through the real entry point
    assert miss.returncode == 2 and miss.stderr.count("\n") == 1 and "--text" in miss.stderr
    assert digest(p) == before


def test_rollback_across_a_redaction_says_the_state_differs(made: tuple[Path, dict[str, str]]) -> None:
    p, ids = made
    assert invoke("forget", p, ids["m"]).exit_code == 0
    r = invoke("rollback", p, "--to", "a", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["matches_checkpoint"] is True  # the forgotten one is back
    assert invoke("redact", p, ids["s"]).exit_code == 0
    r = invoke("rollback", p, "--to", "a", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["changed"] is False and doc["matches_checkpoint"] is False
    assert invoke("forget", p, ids["n"]).exit_code == 0
    r = invoke("rollback", p, "--to", "a")
    assert r.exit_code == 0 and "redacted since stay gone" in r.stdout
    with capsule.open(p) as cap:
        assert ids["n"] in {x["id"] for x in cap.state().notes}
        assert ids["s"] not in {m["id"] for ms in cap.state().memories.values() for m in ms}


def test_supersede_with_valid_from_records_a_change_in_the_world(tmp_path: Path) -> None:
    # questions review: the CLI had no way to say when a new fact became true, so every CLI
    # supersede was a correction in the valid-time view (13.6)
    p = tmp_path / "v.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        ann = tx.remember("the CEO is Ann")
    r = invoke("supersede", p, ann[:8], "--text", "the CEO is Bob", "--valid-from", "2024-03-01", "--json")
    assert r.exit_code == 0, r.output
    with capsule.open(p) as cap:
        bob = cap.get(json.loads(r.stdout)["new"])
        assert bob.valid_from == 1_709_251_200 * 10**9
        before = cap.state(valid_at="2024-02-01T00:00:00Z").memories["working"]
        after = cap.state(valid_at="2024-04-01T00:00:00Z").memories["working"]
    assert [m["text"] for m in before] == ["the CEO is Ann"] and [m["text"] for m in after] == ["the CEO is Bob"]


def test_option_values_are_checked_and_named(tmp_path: Path) -> None:
    # second attack: supersede --valid-from took Arabic-Indic digits as int ns, errors said "time
    # ''" without the option; rotate-keys --new k.pub blamed --key; state --valid-at marked
    # memories [expired] by today, not by the valid time list judges them at
    p = tmp_path / "v.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        ann = tx.remember("the CEO is Ann")
        tx.remember("door code 1234", ttl=3600 * 10**9, time=1_700_000_000 * 10**9)
    before = digest(p)
    for args, said in ((["--valid-from", "\u0661\u0667\u0660\u0660"], "--valid-from '\u0661\u0667\u0660\u0660' is not"),
                       (["--valid-from", ""], "--valid-from '' is not"),
                       (["--valid-to", "nope"], "--valid-to 'nope' is not"),
                       (["--valid-from", str(2**63)], f"--valid-from '{2**63}' is outside 1970"),
                       (["--valid-to", "2026-01-01T00:00:00.\u0665Z"], "--valid-to '2026-01-01T00:00:00.\u0665Z' is not")):
        r = invoke("supersede", p, ann[:8], "--text", "x", *args)
        assert r.exit_code == 2 and said in r.stderr, r.stderr
    assert digest(p) == before
    capsule.save_private_key(tmp_path / "k", capsule.generate_key(), passphrase=None)
    r = invoke("rotate-keys", p, "--key", tmp_path / "k", "--new", tmp_path / "k.pub")
    assert r.exit_code == 2 and f"--new {tmp_path / 'k.pub'}: " in r.stderr, r.stderr
    then = invoke("state", p, "--valid-at", "2023-11-14T22:30:00Z").stdout  # within the hour it held
    assert "door code 1234" in then and "[expired]" not in then
    assert "door code 1234" not in invoke("state", p, "--valid-at", "2023-11-15T00:00:00Z").stdout  # 13.6: over
