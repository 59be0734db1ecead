"""The CLI as a new user met it from the README (s15 review): each case failed before its fix."""

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


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env["COLUMNS"] = "200"
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, input="", capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def usage_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error: ") and needle in lines[0], r.stderr


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def cap(tmp_path: Path) -> Path:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as c, c.commit() as tx:
        fact = tx.remember("disk usage above 90%: page storage")
        tx.decide("page dana", rationale="the disk rule", evidence=[fact])
    return p


def test_huge_limits_are_no_internal_error(cap: Path) -> None:
    """islice() refused a stop past sys.maxsize: 'internal error' and exit 70."""
    for n in ("9223372036854775807", "99999999999999999999"):
        r = run("log", cap, "--limit", n, "--json", cwd=cap.parent)
        assert r.returncode == 0, r.stderr
        assert [c["commit"] for c in json.loads(r.stdout)] == [1, 2]
    (cap.parent / "two.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    before = sha(cap)
    usage_error(run("put", cap, "--jsonl", "two.jsonl", "--batch", "99999999999999999999", cwd=cap.parent),
                "--batch")
    assert sha(cap) == before


def test_list_json_of_decisions_carries_their_evidence(cap: Path) -> None:
    """The README's `list --kind decision --json  # each decision's evidence` printed no evidence."""
    [d] = json.loads(run("list", cap, "--kind", "decision", "--json", cwd=cap.parent).stdout)
    with capsule.open(cap) as c:
        [fact] = [m.id for m in c.records(kind="memory")]
    assert d["evidence"] == [fact] and d["rationale"] == "the disk rule" and d["text"] == d["summary"] == "page dana"
    [m] = json.loads(run("list", cap, "--kind", "memory", "--json", cwd=cap.parent).stdout)
    assert set(m) == {"id", "kind", "meta", "score", "tags", "text", "time"}  # memories: the search shape (16.7)


def test_demote_errors_say_demote(cap: Path) -> None:
    with capsule.open(cap) as c:
        [fact] = [m.id for m in c.records(kind="memory")]
    usage_error(run("demote", cap, fact[:8], "--tier", "working", cwd=cap.parent), "demote: ")
    usage_error(run("demote", cap, fact[:8], "--tier", "gold", cwd=cap.parent), "demote: tier must be one of")


@pytest.mark.parametrize("argv", [["forget", "adir", "abcd"], ["redact", "adir", "abcd"],
                                  ["promote", "adir", "abcd", "--tier", "validated"],
                                  ["merge", "adir", "adir", "-o", "m.capsule"]])
def test_a_directory_is_named_as_one_not_as_a_capsule_to_init(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "adir").mkdir()
    r = run(*argv, cwd=tmp_path)
    usage_error(r, "adir: is a directory, not a capsule")
    assert "init" not in r.stderr


def test_a_query_vector_against_a_capsule_without_vectors_says_so(cap: Path) -> None:
    (cap.parent / "q.json").write_text(json.dumps([0.1] * 8))
    for extra in ([], ["--mode", "vector", "--json"]):
        usage_error(run("search", cap, "--vector", "q.json", *extra, cwd=cap.parent), "has no vectors")
    both = run("search", cap, "disk", "--vector", "q.json", "--json", cwd=cap.parent)  # hybrid: the words still rank
    assert both.returncode == 0 and json.loads(both.stdout), both.stderr


def test_wrong_files_named_as_keys_are_usage_errors(cap: Path) -> None:
    tmp = cap.parent
    usage_error(run("verify", cap, "--trust", cap, cwd=tmp), f"--trust {cap}")
    assert run("keygen", "-o", "k.key", cwd=tmp).returncode == 0
    assert run("keygen", "-o", "n.key", cwd=tmp).returncode == 0
    assert run("checkpoint", cap, "c0", "--key", "k.key", cwd=tmp).returncode == 0
    before = sha(cap)
    usage_error(run("rotate-keys", cap, "--key", "k.key", "--new", "n.key", "--threshold", "5", cwd=tmp),
                "--threshold 5: the new keyset has 1 key(s)")
    assert sha(cap) == before


def test_diff_from_yesterday_on_a_capsule_younger_than_that(cap: Path) -> None:
    """'What changed since yesterday' on a capsule made today: 'no commit at or before yesterday'."""
    for since in ("yesterday", "6h ago", "2020-01-01T00:00:00Z"):
        r = run("diff", cap, "--from", since, "--json", cwd=cap.parent)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["added"]["count"] == 2 and d["added"]["by_kind"] == {"decision": 1, "memory": 1}
    usage_error(run("state", cap, "--at", "yesterday", cwd=cap.parent), "no commit at or before yesterday")
