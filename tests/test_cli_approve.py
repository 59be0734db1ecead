"""`capsule approve`: an approver signs from the shell what a rule gates (spec 7.3.1, 7.4).

Before it, an approval needed the library (or a precomputed subject and signature for
`put --kind approval`), so a person could not let a gated action run from a terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule

CAPSULE_BIN = Path(sys.executable).with_name("capsule")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    full["COLUMNS"] = "200"
    full.update(env or {})
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, input="", capture_output=True, text=True,
                          env=full, timeout=120, check=False)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error: ") and needle in lines[0], proc.stderr


@pytest.fixture
def gated(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A capsule whose keyset is {k}, with a rule that gates email.* on one approval; o is outside."""
    p, k, o = tmp_path / "a.capsule", tmp_path / "k.key", tmp_path / "o.key"
    for args in (("init", p), ("keygen", "-o", k), ("keygen", "-o", o), ("checkpoint", p, "c0", "--key", k)):
        assert run(*args, cwd=tmp_path).returncode == 0
    body = json.dumps({"text": "email needs a human", "rule": {"action": "email.*"}})
    assert run("put", p, "--kind", "constraint", "--json-body", body, cwd=tmp_path).returncode == 0
    return p, k, o


def send(p: Path) -> str:
    with capsule.open(p, "a") as cap:
        try:
            return str(cap.run_once("email.send", lambda: "sent"))
        except capsule.PolicyViolation:
            return "refused"


def test_an_approval_of_the_action_key_lets_the_gated_action_run(gated: tuple[Path, Path, Path]) -> None:
    p, k, o = gated
    cwd = p.parent
    assert send(p) == "refused"
    outsider = run("approve", p, "--action", "email.send", "--key", o, cwd=cwd)
    assert outsider.returncode == 0, outsider.stderr
    assert "not in the keyset in force" in outsider.stderr and "approval " in outsider.stdout
    assert send(p) == "refused"  # kept, but a key outside the keyset counts for no rule
    r = run("approve", p, "--action", "email.send", "--key", k, "--json", cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    kid = capsule.load_private_key(k).key_id
    assert doc["action"] == "email.send" and doc["subject"] == capsule.action_subject("email.send").hex()
    assert [(a["approver"], a["in_keyset"]) for a in doc["approvals"]] == [(kid, True)]
    with capsule.open(p) as cap:
        rec = cap.get(doc["approvals"][0]["id"])
        assert rec.kind == "approval" and rec.approver == kid
    assert send(p) == "sent"
    v = run("verify", p, "--policy", cwd=cwd)
    assert v.returncode == 0 and "policy: no violation" in v.stdout, v.stdout + v.stderr
    audit = run("audit", p, "email.send", cwd=cwd)
    assert f"{kid[:8]} verified" in audit.stdout, audit.stdout


def test_approve_a_decision_by_prefix_with_two_keys_in_one_commit(gated: tuple[Path, Path, Path]) -> None:
    p, k, o = gated
    cwd = p.parent
    dec = run("put", p, "--kind", "decision", "--json-body", '{"summary": "mail the customer"}', cwd=cwd).stdout.strip()
    with capsule.open(p) as cap:
        seq = cap.summary().commits
    r = run("approve", p, dec[:8], "--key", k, "--key", o, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["record"] == doc["subject"] == dec and doc["kind"] == "decision"
    assert [a["in_keyset"] for a in doc["approvals"]] == [True, False]
    with capsule.open(p) as cap:
        assert cap.summary().commits == seq + 1  # both approvals, one commit
        assert {cap.get(a["id"]).subject.hex() for a in doc["approvals"]} == {dec}
    with capsule.open(p, "a") as cap:
        assert cap.run_once("email.send", lambda: "sent", inputs={"decision": dec}) == "sent"


@pytest.mark.parametrize("args, needle", [
    ([], "give a record ID or --action KEY"),
    (["--action", "email.send"], "give --key KEY"),
    (["abcd", "--action", "email.send", "--key", "K"], "give a record ID or --action KEY"),
    (["abcd", "--key", "K"], "no record with id prefix 'abcd'"),
    (["--action", "", "--key", "K"], "never empty"),
    (["--action", "email.send", "--key", "K", "--key", "K"], "the same key given twice"),
    (["--action", "email.send", "--key", "missing.key"], "no key file at missing.key"),
    (["--action", "email.send", "--key", "K.pub"], "K.pub"),
])
def test_bad_input_is_one_line_and_leaves_the_file_alone(gated: tuple[Path, Path, Path], args: list[str],
                                                          needle: str) -> None:
    p, k, _ = gated
    before = sha(p)
    argv = [str(k) if a == "K" else f"{k}.pub" if a == "K.pub" else a for a in args]
    one_line_error(run("approve", p, *argv, cwd=p.parent), needle.replace("K.pub", f"{k.name}.pub"))
    assert sha(p) == before


def test_approve_in_an_encrypted_capsule(tmp_path: Path) -> None:
    p, k = tmp_path / "e.capsule", tmp_path / "k.key"
    env = {"CAP_PW": "correct horse battery staple"}
    assert run("init", p, "--encrypt", "--passphrase-env", "CAP_PW", cwd=tmp_path, env=env).returncode == 0
    assert run("keygen", "-o", k, cwd=tmp_path).returncode == 0
    locked = run("approve", p, "--action", "deploy", "--key", k, cwd=tmp_path)
    assert locked.returncode != 0 and "Traceback" not in locked.stderr
    r = run("approve", p, "--action", "deploy", "--key", k, "--capsule-passphrase-env", "CAP_PW", "--json",
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "no keyset yet" in r.stderr  # no checkpoint has set a keyset
    with capsule.open(p, passphrase=env["CAP_PW"].encode()) as cap:
        assert cap.get(json.loads(r.stdout)["approvals"][0]["id"]).subject == capsule.action_subject("deploy")


def test_state_and_beliefs_show_the_rule_of_a_constraint(gated: tuple[Path, Path, Path]) -> None:
    """A rule was shown by get and audit only: `state` and `beliefs` hid which actions need approval."""
    p, _, _ = gated
    cwd = p.parent
    doc = json.loads(run("state", p, "--json", cwd=cwd).stdout)
    assert [(c["text"], c.get("rule")) for c in doc["constraints"]] == [("email needs a human", {"action": "email.*"})]
    assert json.loads(run("beliefs", p, "--json", cwd=cwd).stdout)["constraints"] == doc["constraints"]
    assert "(rule email.*: 1 approval by keys of the keyset)" in run("state", p, cwd=cwd).stdout
    assert "rule email.*" in run("beliefs", p, cwd=cwd).stdout
    plain = p.parent / "plain.capsule"
    with capsule.create(plain) as cap, cap.commit() as tx:
        tx.constrain("be kind")
    assert "rule" not in json.loads(run("state", plain, "--json", cwd=cwd).stdout)["constraints"][0]
