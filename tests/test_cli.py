"""The ``capsule`` command line: exit codes, JSON shapes, atomic input and read-only promises.

Two ways in, on purpose:

* ``typer.testing.CliRunner`` runs the app in-process (fast, sees the exception
  object, so "no traceback" means ``result.exception`` is at most a SystemExit);
* real subprocesses of the installed ``.venv/bin/capsule`` console script prove
  what a user sees: the real entry point, real stdin/stdout/stderr bytes, and
  that no traceback ever reaches the terminal.

Contract under test (cli/_errors.py): exit 0 ok, 1 bad capsule or bad
input data, 2 wrong usage; an error is one line on stderr starting
``capsule: error:``; a rejected ``put`` leaves the capsule byte-for-byte as it
was; ``open``/``log``/``verify`` never write.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer.core
import typer.main
import typer.models
from capsule_cli.main import app
from typer.testing import CliRunner, Result

import capsule
from capsule.core import constants as C

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
ERROR_PREFIX = "capsule: error:"
# A fixed clock makes commit times (and so ``last_commit_time``) exact.
FIXED_NS = 1_700_000_000 * 1_000_000_000
FIXED_ISO = "2023-11-14T22:13:20Z"

OPEN_KEYS = {"file_id", "format_version", "commits", "records", "records_by_kind", "bytes",
             "state_root", "last_commit_time"}
LOG_KEYS = {"seq", "offset", "end", "records", "time", "root"}
VERIFY_KEYS = {"ok", "file_id", "format_version", "commits", "records", "bytes", "first_error"}
FIRST_ERROR_KEYS = {"offset", "seq", "check", "message"}

runner = CliRunner()


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # SOURCE_DATE_EPOCH changes file ids and clocks; colour forcing changes output bytes.
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def fixed_clock() -> int:
    return FIXED_NS


def make_capsule(path: Path, texts: Sequence[str] = ("alpha", "beta"),
                 clock: Callable[[], int] | None = None) -> Path:
    """A capsule made by the library (not the CLI), so CLI bugs cannot hide in the setup."""
    with capsule.create(path, clock=clock) as cap:
        if texts:
            with cap.commit() as tx:
                for t in texts:
                    tx.remember(t, tags=["seed"])
    return path


def make_torn(path: Path) -> tuple[Path, int]:
    """A capsule whose last append was interrupted: a half-written commit after the last good one.

    Returns (path, committed length). Built by appending one more commit and
    cutting the file in the middle of it, which is exactly what a crash leaves.
    """
    make_capsule(path)
    committed = path.stat().st_size
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        tx.remember("this append is cut short by a crash")
    full = path.stat().st_size
    os.truncate(path, committed + (full - committed) // 2)
    rep = capsule.verify(path)
    assert rep.ok and rep.torn_tail > 0, "setup: expected a torn tail that verify accepts"
    return path, committed


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    return runner.invoke(app, list(args), input=input, env={"COLUMNS": "200"})


def assert_no_crash(result: Result) -> None:
    """A non-SystemExit exception in-process is a traceback on a real terminal."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {exc!r}\n{result.output}"


def assert_one_line_error(stderr: str, prefix: str = ERROR_PREFIX) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def run_capsule(*args: str | bytes | Path, cwd: Path, stdin: bytes | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real console script, as a user runs it."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    full_env["COLUMNS"] = "200"
    full_env.update(env or {})
    argv: list[str | bytes] = [str(CAPSULE_BIN)]
    argv += [str(a) if isinstance(a, Path) else a for a in args]
    return subprocess.run(argv, cwd=cwd, input=stdin if stdin is not None else b"",
                          capture_output=True, env=full_env, timeout=120, check=False)


def text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def log_rows(path: Path) -> list[dict[str, Any]]:
    r = invoke("log", str(path), "--json")
    assert r.exit_code == 0, r.output
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def write_jsonl(path: Path, objs: Sequence[dict[str, Any]]) -> bytes:
    data = "".join(json.dumps(o) + "\n" for o in objs).encode()
    path.write_bytes(data)
    return data


@pytest.fixture
def cap_path(tmp_path: Path) -> Path:
    return make_capsule(tmp_path / "agent.capsule")


def test_console_script_is_installed() -> None:
    # Every subprocess test below depends on this; fail loudly and once.
    assert CAPSULE_BIN.is_file(), f"{CAPSULE_BIN} missing: is the package installed in the venv?"
    assert os.access(CAPSULE_BIN, os.X_OK)


# --- init ----------------------------------------------------------------------------------


def test_init_creates_an_empty_capsule_that_verifies(tmp_path: Path) -> None:
    p = tmp_path / "new.capsule"
    r = invoke("init", str(p))
    assert r.exit_code == 0, r.output
    assert p.is_file()
    with capsule.open(p) as cap:
        assert len(cap) == 0
        assert cap.commit_count == 1
        file_id = cap.file_id
    assert file_id in r.stdout
    assert capsule.verify(p).ok


def test_init_json(tmp_path: Path) -> None:
    p = tmp_path / "new.capsule"
    r = invoke("init", str(p), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    with capsule.open(p) as cap:
        assert info["file_id"] == cap.file_id
        assert info["state_root"] == cap.state_root
    assert Path(info["file"]) == p


@pytest.mark.parametrize("existing", ["capsule", "other-file"])
def test_init_on_existing_file_is_usage_error_and_leaves_it_alone(tmp_path: Path, existing: str) -> None:
    p = tmp_path / "agent.capsule"
    if existing == "capsule":
        make_capsule(p)
    else:
        p.write_bytes(b"someone's precious notes\n")
    before = p.read_bytes()
    proc = run_capsule("init", p, cwd=tmp_path)
    assert proc.returncode == 2, text(proc.stderr)
    assert_one_line_error(text(proc.stderr))
    assert p.read_bytes() == before


def test_init_in_missing_directory_is_usage_error(tmp_path: Path) -> None:
    r = invoke("init", str(tmp_path / "no" / "such" / "dir.capsule"))
    assert r.exit_code == 2
    assert_no_crash(r)
    assert_one_line_error(r.stderr)
    assert not (tmp_path / "no").exists()


def test_reproducible_with_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SOURCE_DATE_EPOCH => the same commands give byte-identical files (brief: fixed clock + id)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    files = []
    for name in ("one", "two"):
        d = tmp_path / name
        d.mkdir()
        p = d / "agent.capsule"
        assert invoke("init", str(p)).exit_code == 0
        r = invoke("put", str(p), "--text", "same everywhere", "--tag", "ops")
        assert r.exit_code == 0, r.output
        files.append(p.read_bytes())
    assert files[0] == files[1]


# --- put --text ----------------------------------------------------------------------------


def test_put_text_with_tags_and_meta_prints_the_id(tmp_path: Path, cap_path: Path) -> None:
    proc = run_capsule("put", cap_path, "--text", "deploys freeze on Fridays", "--tag", "ops",
                       "--tag", "calendar", "--meta", "team=infra", "--meta", "query=a=b",
                       cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    out = text(proc.stdout).strip()
    assert HEX64.match(out), out
    with capsule.open(cap_path) as cap:
        m = cap.get(out)
    assert isinstance(m, capsule.Memory)
    assert m.text == "deploys freeze on Fridays"
    assert m.tags == ("calendar", "ops")  # canonical: sorted
    # Everything after the first '=' is the value.
    assert dict(m.meta) == {"team": "infra", "query": "a=b"}
    assert m.id == out


def test_put_text_json(cap_path: Path) -> None:
    before = len(log_rows(cap_path))
    r = invoke("put", str(cap_path), "--text", "one memory", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert {"count", "ids"} <= set(obj)
    assert obj["count"] == 1 and len(obj["ids"]) == 1 and HEX64.match(obj["ids"][0])
    rows = log_rows(cap_path)
    assert len(rows) == before + 1 and rows[-1]["records"] == 1
    with capsule.open(cap_path) as cap:
        assert cap.get(obj["ids"][0]).text == "one memory"


@pytest.mark.parametrize("bad", ["team", "=infra", ""])
def test_put_meta_without_key_value_is_usage_error(cap_path: Path, bad: str) -> None:
    before = cap_path.read_bytes()
    r = invoke("put", str(cap_path), "--text", "x", "--meta", bad)
    assert_no_crash(r)
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr)
    assert cap_path.read_bytes() == before


def test_put_invalid_tag_is_data_error(cap_path: Path) -> None:
    before = cap_path.read_bytes()
    r = invoke("put", str(cap_path), "--text", "x", "--tag", "")
    assert r.exit_code == 1
    assert_no_crash(r)
    assert_one_line_error(r.stderr)
    assert cap_path.read_bytes() == before


def test_put_text_that_is_not_utf8_is_rejected_cleanly(tmp_path: Path, cap_path: Path) -> None:
    """argv bytes that are not UTF-8 arrive as lone surrogates (PEP 383); they must be refused
    as bad input, not crash in the msgpack encoder."""
    before = cap_path.read_bytes()
    proc = run_capsule(b"put", str(cap_path).encode(), b"--text", b"caf\xe9", cwd=tmp_path)
    assert "Traceback" not in text(proc.stderr), text(proc.stderr)
    assert proc.returncode == 1, text(proc.stderr)
    assert_one_line_error(text(proc.stderr))
    assert cap_path.read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="neither-text-nor-jsonl"),
        pytest.param(["--text", "x", "--jsonl", "in.jsonl"], id="both-text-and-jsonl"),
        pytest.param(["--jsonl", "in.jsonl", "--tag", "t"], id="jsonl-with-tag"),
        pytest.param(["--jsonl", "in.jsonl", "--meta", "k=v"], id="jsonl-with-meta"),
        pytest.param(["--jsonl", "missing.jsonl"], id="jsonl-file-missing"),
    ],
)
def test_put_usage_errors(tmp_path: Path, cap_path: Path, args: list[str]) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}])
    before = cap_path.read_bytes()
    args = [str(tmp_path / a) if a.endswith(".jsonl") else a for a in args]
    r = invoke("put", str(cap_path), *args)
    assert_no_crash(r)
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr)
    assert cap_path.read_bytes() == before


# --- put --jsonl ---------------------------------------------------------------------------

JSONL_LINES: list[dict[str, Any]] = [
    {"text": "plain"},
    {"text": "tagged", "tags": ["b", "a"]},
    {"text": "with meta", "meta": {"team": "infra", "n": 3, "nested": {"x": [1, 2]}}},
    {"text": "embedded", "embedding": [0.5, -0.0, 1, 2.25]},
    {"kind": "memory", "text": "explicit kind and time", "time": 123, "tier": "validated",
     "source": "unit-test"},
]


def check_jsonl_committed(path: Path, ids: list[str], rows_before: int) -> None:
    assert len(ids) == len(JSONL_LINES)
    assert all(HEX64.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    rows = log_rows(path)
    # The whole input is exactly one commit holding every record.
    assert len(rows) == rows_before + 1
    assert rows[-1]["records"] == len(JSONL_LINES)
    with capsule.open(path) as cap:
        got = [cap.get(i) for i in ids]
    # ids come back in input order
    assert [m.text for m in got] == [o["text"] for o in JSONL_LINES]
    assert got[1].tags == ("a", "b")
    assert dict(got[2].meta) == {"team": "infra", "n": 3, "nested": {"x": [1, 2]}}
    emb = got[3].embedding
    assert emb is not None and emb.dtype == np.dtype("<f4")
    assert emb.tolist() == [0.5, 0.0, 1.0, 2.25]
    assert got[4].time == 123 and got[4].tier == "validated" and got[4].source == "unit-test"


def test_put_jsonl_file_is_one_commit(tmp_path: Path, cap_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    # a blank line in the middle is skipped, not an error
    data = write_jsonl(src, JSONL_LINES[:2]) + b"\n   \n"
    src.write_bytes(data + "".join(json.dumps(o) + "\n" for o in JSONL_LINES[2:]).encode())
    before = len(log_rows(cap_path))
    r = invoke("put", str(cap_path), "--jsonl", str(src), "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert {"count", "ids"} <= set(obj)
    assert obj["count"] == len(JSONL_LINES)
    check_jsonl_committed(cap_path, obj["ids"], before)


def test_put_jsonl_stdin_in_process(cap_path: Path) -> None:
    data = "".join(json.dumps(o) + "\n" for o in JSONL_LINES)
    before = len(log_rows(cap_path))
    r = invoke("put", str(cap_path), "--jsonl", "-", "--json", input=data)
    assert r.exit_code == 0, r.output
    check_jsonl_committed(cap_path, json.loads(r.stdout)["ids"], before)


def test_put_jsonl_stdin_subprocess(tmp_path: Path, cap_path: Path) -> None:
    data = "".join(json.dumps(o) + "\n" for o in JSONL_LINES).encode()
    before = len(log_rows(cap_path))
    proc = run_capsule("put", cap_path, "--jsonl", "-", "--json", cwd=tmp_path, stdin=data)
    assert proc.returncode == 0, text(proc.stderr)
    assert proc.stderr == b""
    check_jsonl_committed(cap_path, json.loads(proc.stdout)["ids"], before)


def test_put_jsonl_human_output_counts_records(tmp_path: Path, cap_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, JSONL_LINES)
    proc = run_capsule("put", cap_path, "--jsonl", src, cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    assert text(proc.stdout).strip() == f"{len(JSONL_LINES)} records committed"


def test_put_jsonl_again_stores_nothing_twice_and_says_so(tmp_path: Path, cap_path: Path) -> None:
    """Content addressing: the same lines (explicit time) give the same ids and no new records.

    The human summary must not claim records were committed when none were
    (today it prints "2 records committed" for an all-duplicate input).
    """
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"text": "a", "time": 5}, {"text": "b", "time": 6}])
    first = invoke("put", str(cap_path), "--jsonl", str(src), "--json")
    assert first.exit_code == 0, first.output
    with capsule.open(cap_path) as cap:
        n_before = len(cap)
    again = invoke("put", str(cap_path), "--jsonl", str(src), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ids"] == json.loads(first.stdout)["ids"]
    with capsule.open(cap_path) as cap:
        assert len(cap) == n_before
    human = invoke("put", str(cap_path), "--jsonl", str(src))
    assert human.exit_code == 0, human.output
    with capsule.open(cap_path) as cap:
        assert len(cap) == n_before
    m = re.search(r"(\d+) records? committed", human.stdout)
    if m is not None:
        assert int(m.group(1)) == 0, f"claims {human.stdout.strip()!r} but nothing new was stored"


# Every case ends with a bad line after good ones, so "nothing committed" also
# proves the good lines before it were not committed on their own.
GOOD = b'{"text": "good line one"}\n{"text": "good line two", "tags": ["ok"]}\n'
INVALID_JSONL: list[Any] = [
    pytest.param(GOOD + b'{"text": "unterminated\n', id="bad-json"),
    pytest.param(GOOD + b'{"text": "x", "colour": "red"}\n', id="unknown-field"),
    pytest.param(GOOD + b'{"kind": "nope", "text": "x"}\n', id="unknown-kind"),
    pytest.param(GOOD + b'{"kind": 5, "text": "x"}\n', id="kind-not-a-string"),
    pytest.param(GOOD + b'{"tags": ["no text"]}\n', id="missing-text"),
    pytest.param(GOOD + b'{"text": 5}\n', id="text-not-a-string"),
    pytest.param(GOOD + b'{"text": "x", "tags": "ops"}\n', id="tags-a-string"),
    pytest.param(GOOD + b'{"text": "x", "tags": [1]}\n', id="tag-not-a-string"),
    pytest.param(GOOD + b'{"text": "x", "meta": [1]}\n', id="meta-not-a-map"),
    pytest.param(GOOD + b'{"text": "x", "meta": {"k": NaN}}\n', id="meta-nan"),
    pytest.param(GOOD + b'{"text": "x", "time": -1}\n', id="time-negative"),
    pytest.param(GOOD + b'{"text": "x", "time": 1.5}\n', id="time-fractional"),
    pytest.param(GOOD + b'{"text": "x", "time": true}\n', id="time-bool"),
    pytest.param(GOOD + b'{"text": "x", "tier": "forever"}\n', id="tier-unknown"),
    pytest.param(GOOD + b'{"text": "x", "ttl": 0}\n', id="ttl-zero"),
    pytest.param(GOOD + b'{"text": "x", "source": 5}\n', id="source-not-a-string"),
    pytest.param(GOOD + b'[1, 2]\n', id="line-not-an-object"),
    pytest.param(GOOD + b'{"text": "caf\xe9"}\n', id="file-not-utf8"),
    pytest.param(GOOD + b'{"text": "x", "embedding": [NaN, 1.0]}\n', id="embedding-nan"),
    pytest.param(GOOD + b'{"text": "x", "embedding": [Infinity]}\n', id="embedding-inf"),
    pytest.param(GOOD + b'{"text": "x", "embedding": []}\n', id="embedding-empty"),
    pytest.param(GOOD + b'{"text": "x", "embedding": [[1, 2]]}\n', id="embedding-nested"),
    pytest.param(GOOD + b'{"text": "x", "embedding": "abc"}\n', id="embedding-a-string"),
    # Wrong element types must not be coerced into floats (numpy would turn
    # "1.5" into 1.5 and true into 1.0).
    pytest.param(GOOD + b'{"text": "x", "embedding": ["1.5", "2"]}\n', id="embedding-of-strings"),
    pytest.param(GOOD + b'{"text": "x", "embedding": [true, false]}\n', id="embedding-of-bools"),
    # JSON can spell a lone surrogate; UTF-8 cannot encode it.
    pytest.param(GOOD + b'{"text": "\\ud800"}\n', id="text-lone-surrogate"),
    pytest.param(GOOD + b'{"text": "x", "tags": ["\\udc80"]}\n', id="tag-lone-surrogate"),
]


@pytest.mark.parametrize("payload", INVALID_JSONL)
def test_invalid_jsonl_is_rejected_and_capsule_unchanged(tmp_path: Path, cap_path: Path,
                                                         payload: bytes) -> None:
    # In-process: an exception other than SystemExit here is a traceback on a terminal.
    src = tmp_path / "in.jsonl"
    src.write_bytes(payload)
    before = cap_path.read_bytes()
    r = invoke("put", str(cap_path), "--jsonl", str(src), "--json")
    assert_no_crash(r)
    assert r.exit_code == 1, f"exit {r.exit_code}; stdout={r.stdout!r} stderr={r.stderr!r}"
    assert_one_line_error(r.stderr)
    assert r.stdout == ""
    assert cap_path.read_bytes() == before


# The same contract through the real console script, for a sample of the cases
# above (a subprocess costs ~0.5 s, the in-process run ~20 ms).
REAL_PROCESS_SAMPLE = {"bad-json", "unknown-kind", "file-not-utf8", "embedding-nan",
                       "text-lone-surrogate"}


@pytest.mark.parametrize("payload", [p for p in INVALID_JSONL if p.id in REAL_PROCESS_SAMPLE])
def test_invalid_jsonl_real_process(tmp_path: Path, cap_path: Path, payload: bytes) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(payload)
    before = cap_path.read_bytes()
    proc = run_capsule("put", cap_path, "--jsonl", src, "--json", cwd=tmp_path)
    stderr = text(proc.stderr)
    assert "Traceback" not in stderr and "Traceback" not in text(proc.stdout), stderr
    assert proc.returncode == 1, f"exit {proc.returncode}; stdout={text(proc.stdout)!r} stderr={stderr!r}"
    assert_one_line_error(stderr)
    assert proc.stdout == b""
    assert cap_path.read_bytes() == before


@pytest.mark.parametrize("payload", [
    pytest.param(b'{"text": "ok"}\n{"text": 5}\n', id="bad-record"),
    pytest.param(b'{"text": "ok"}\n{"text": "caf\xe9"}\n', id="not-utf8"),
])
def test_invalid_jsonl_on_stdin_is_rejected_and_capsule_unchanged(tmp_path: Path, cap_path: Path,
                                                                  payload: bytes) -> None:
    """stdin is decoded with surrogateescape by Python, unlike a file opened with encoding=utf-8,
    so non-UTF-8 stdin needs its own test."""
    before = cap_path.read_bytes()
    proc = run_capsule("put", cap_path, "--jsonl", "-", cwd=tmp_path, stdin=payload)
    stderr = text(proc.stderr)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 1, stderr
    assert_one_line_error(stderr)
    assert cap_path.read_bytes() == before


def test_invalid_jsonl_error_names_the_line(tmp_path: Path, cap_path: Path) -> None:
    # Line numbers count blank lines, so a user can jump straight to the line.
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "ok"}\n\n{"text": "also ok"}\n{"text": 5}\n')
    r = invoke("put", str(cap_path), "--jsonl", str(src))
    assert r.exit_code == 1
    assert_no_crash(r)
    assert "line 4" in assert_one_line_error(r.stderr)


def test_rejected_put_does_not_touch_a_torn_capsule(tmp_path: Path) -> None:
    """A bad input line must leave the file byte-for-byte as it was, even when the file has a
    torn tail: the writer's recovery (truncate + RECOVERY commit) must not run for a put that
    is going to be refused. Today the CLI opens the writer before validating the records."""
    p, _ = make_torn(tmp_path / "torn.capsule")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "fine"}\n{"text": 5}\n')
    before = p.read_bytes()
    r = invoke("put", str(p), "--jsonl", str(src))
    assert r.exit_code == 1
    assert_no_crash(r)
    assert_one_line_error(r.stderr)
    assert p.read_bytes() == before


def test_put_on_torn_capsule_recovers_and_commits(tmp_path: Path) -> None:
    p, committed = make_torn(tmp_path / "torn.capsule")
    with capsule.open(p) as cap:
        n = len(cap)
    r = invoke("put", str(p), "--text", "after the crash")
    assert r.exit_code == 0, r.output
    rep = capsule.verify(p)
    assert rep.ok and rep.torn_tail == 0 and rep.records == n + 1
    assert p.stat().st_size > committed


def test_put_while_another_writer_holds_the_lock(tmp_path: Path, cap_path: Path) -> None:
    before = cap_path.read_bytes()
    with capsule.open(cap_path, "a"):
        proc = run_capsule("put", cap_path, "--text", "x", cwd=tmp_path)
        # readers are lock-free and still work meanwhile
        reader = run_capsule("open", cap_path, "--json", cwd=tmp_path)
    assert proc.returncode == 2, text(proc.stderr)
    line = assert_one_line_error(text(proc.stderr))
    assert str(os.getpid()) in line  # names who holds it
    assert reader.returncode == 0, text(reader.stderr)
    assert cap_path.read_bytes() == before


# --- usage errors for every command -----------------------------------------------------------

COMMAND_ARGS: dict[str, list[str]] = {
    "open": [], "log": [], "verify": [], "put": ["--text", "x"],
}


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_missing_capsule_is_usage_error(tmp_path: Path, command: str) -> None:
    p = tmp_path / "absent.capsule"
    proc = run_capsule(command, p, *COMMAND_ARGS[command], cwd=tmp_path)
    assert proc.returncode == 2, text(proc.stderr)
    assert_one_line_error(text(proc.stderr))
    assert not p.exists(), "a failed command must not create the capsule"


@pytest.mark.parametrize("command", ["init", "put", "open", "log", "verify"])
def test_bad_option_is_usage_error(tmp_path: Path, cap_path: Path, command: str) -> None:
    before = cap_path.read_bytes()
    r = invoke(command, str(cap_path), "--no-such-option")
    assert r.exit_code == 2
    assert_no_crash(r)
    assert "--no-such-option" in r.output
    assert cap_path.read_bytes() == before


@pytest.mark.parametrize("argv", [["frobnicate"], ["open"], ["verify", "a", "b"]],
                         ids=["unknown-command", "missing-argument", "extra-argument"])
def test_other_usage_errors_exit_2(tmp_path: Path, argv: list[str]) -> None:
    proc = run_capsule(*argv, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in text(proc.stderr)


@pytest.mark.parametrize("command", ["open", "log", "verify"])
def test_directory_is_not_a_capsule(tmp_path: Path, command: str) -> None:
    r = invoke(command, str(tmp_path))
    assert r.exit_code == 2
    assert_no_crash(r)
    assert_one_line_error(r.stderr)


# --- open ---------------------------------------------------------------------------------


def test_open_json(tmp_path: Path) -> None:
    p = make_capsule(tmp_path / "a.capsule", texts=("one", "two", "three"), clock=fixed_clock)
    r = invoke("open", str(p), "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert set(s) >= OPEN_KEYS, OPEN_KEYS - set(s)
    with capsule.open(p) as cap:
        assert s["file_id"] == cap.file_id
        assert s["state_root"] == cap.state_root
    assert s["format_version"] == f"{C.FORMAT_MAJOR}.{C.FORMAT_MINOR}"
    assert s["commits"] == 2  # create's empty commit + one batch
    assert s["records"] == 3
    assert s["records_by_kind"] == {"memory": 3}
    assert s["bytes"] == p.stat().st_size
    assert s["last_commit_time"] == FIXED_ISO
    assert HEX64.match(s["state_root"])


def test_open_human_output_names_the_essentials(cap_path: Path) -> None:
    r = invoke("open", str(cap_path))
    assert r.exit_code == 0, r.output
    with capsule.open(cap_path) as cap:
        assert cap.file_id in r.stdout
        assert cap.state_root in r.stdout
    assert "memory" in r.stdout


def test_state_root_is_independent_of_commit_grouping(tmp_path: Path) -> None:
    """state_root covers the record set, not the history: one batch or one-by-one agree."""
    lines = [{"text": f"m{i}", "time": i + 1} for i in range(3)]
    batch, single = tmp_path / "batch.capsule", tmp_path / "single.capsule"
    make_capsule(batch, texts=())
    make_capsule(single, texts=())
    src = tmp_path / "in.jsonl"
    write_jsonl(src, lines)
    assert invoke("put", str(batch), "--jsonl", str(src)).exit_code == 0
    for line in lines:
        write_jsonl(src, [line])
        assert invoke("put", str(single), "--jsonl", str(src)).exit_code == 0
    a, b = (json.loads(invoke("open", str(p), "--json").stdout) for p in (batch, single))
    assert a["state_root"] == b["state_root"]
    assert (a["commits"], b["commits"]) == (2, 4)


# --- log ----------------------------------------------------------------------------------


def test_log_json_rows(tmp_path: Path) -> None:
    p = make_capsule(tmp_path / "a.capsule", texts=(), clock=fixed_clock)
    assert invoke("put", str(p), "--text", "first").exit_code == 0
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"text": "second"}, {"text": "third"}])
    assert invoke("put", str(p), "--jsonl", str(src)).exit_code == 0
    rows = log_rows(p)
    assert len(rows) == 3
    for row in rows:
        assert set(row) >= LOG_KEYS, LOG_KEYS - set(row)
        assert HEX64.match(row["root"])
        assert isinstance(row["time"], str) and row["time"].endswith("Z")
    assert [r["records"] for r in rows] == [0, 1, 2]
    assert rows[0]["time"] == FIXED_ISO
    # The commits tile the file in order: each COMMIT frame starts after the last one
    # ended and the last one ends the file.
    assert rows[0]["offset"] == C.HEADER_SIZE
    for prev, cur in zip(rows, rows[1:], strict=False):
        assert cur["offset"] >= prev["end"]
        assert cur["seq"] > prev["seq"]
    for row in rows:
        assert row["offset"] < row["end"]
    assert rows[-1]["end"] == p.stat().st_size
    with capsule.open(p) as cap:
        assert rows[-1]["root"] == cap.root


def test_log_human_output_lists_every_commit(cap_path: Path) -> None:
    r = invoke("log", str(cap_path))
    assert r.exit_code == 0, r.output
    rows = log_rows(cap_path)
    for row in rows:
        assert row["root"][:16] in r.stdout


# --- verify -------------------------------------------------------------------------------


def test_verify_json_ok(cap_path: Path) -> None:
    r = invoke("verify", str(cap_path), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert set(rep) >= VERIFY_KEYS, VERIFY_KEYS - set(rep)
    assert rep["ok"] is True
    assert rep["first_error"] is None
    with capsule.open(cap_path) as cap:
        assert rep["file_id"] == cap.file_id
        assert rep["format_version"] == cap.format_version
        assert rep["commits"] == cap.commit_count
        assert rep["records"] == len(cap)
    assert rep["bytes"] == cap_path.stat().st_size


def test_verify_human_ok(cap_path: Path) -> None:
    proc = run_capsule("verify", cap_path, cwd=cap_path.parent)
    assert proc.returncode == 0
    assert text(proc.stdout).startswith("ok")
    assert proc.stderr == b""


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("quick", [False, True], ids=["deep", "quick"])
@pytest.mark.parametrize("where", ["header", "records-payload"])
def test_verify_corrupted_file(tmp_path: Path, where: str, quick: bool) -> None:
    p = make_capsule(tmp_path / "a.capsule")
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        # 8.2: damage in the last commit's own bytes reads as a torn tail (a power loss
        # during it looks the same); a later commit makes the one flipped below durable.
        tx.remember("a later commit")
    rows = log_rows(p)
    if where == "header":
        target, want_offset, want_seq = 10, 0, None
    else:
        # The first RECORDS frame sits right after create's empty commit; flip a
        # byte of its payload (past the 32-byte frame header).
        target = rows[0]["end"] + C.FRAME_HEADER_SIZE + 3
        want_offset, want_seq = rows[0]["end"], rows[0]["seq"] + 1
    _flip(p, target)
    corrupted = p.read_bytes()
    extra = ["--quick"] if quick else []

    r = invoke("verify", str(p), "--json", *extra)
    assert r.exit_code == 1, r.output
    assert_no_crash(r)
    rep = json.loads(r.stdout)
    assert set(rep) >= VERIFY_KEYS
    assert rep["ok"] is False
    err = rep["first_error"]
    assert set(err) == FIRST_ERROR_KEYS
    assert err["offset"] == want_offset
    assert err["seq"] == want_seq
    assert isinstance(err["check"], str) and err["check"]
    assert isinstance(err["message"], str) and err["message"]

    human = invoke("verify", str(p), *extra)
    assert human.exit_code == 1
    assert_no_crash(human)
    line = assert_one_line_error(human.stderr, prefix="capsule: ")
    assert f"offset {want_offset}" in line and err["check"] in line
    assert p.read_bytes() == corrupted, "verify must never repair"


def test_verify_torn_tail_is_ok_with_a_warning(tmp_path: Path) -> None:
    p, committed = make_torn(tmp_path / "torn.capsule")
    r = invoke("verify", str(p), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["ok"] is True and rep["first_error"] is None
    assert rep["torn_tail_bytes"] == p.stat().st_size - committed
    s = json.loads(invoke("open", str(p), "--json").stdout)
    assert s["bytes"] == committed
    assert s["torn_tail_bytes"] == p.stat().st_size - committed


def test_a_writer_that_drops_a_torn_tail_says_so_and_verify_shows_it(tmp_path: Path) -> None:
    # A byte flipped in the last commit reads as a tear (8.2); the next put drops that commit.
    # The fleet review saw it go without a word: the writer now warns, verify lists the RECOVERY.
    p = make_capsule(tmp_path / "a.capsule")
    committed = p.stat().st_size
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        tx.remember("the last commit, damaged below")
    _flip(p, p.stat().st_size - 100)
    lost = p.stat().st_size - committed
    r = run_capsule("put", p, "--text", "next", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["new"] == 1
    assert text(r.stderr).strip() == (f"capsule: warning: {p}: dropped a torn tail of {lost} bytes at offset "
                                      f"{committed} (a commit that was not durable, or damage that cannot be "
                                      "told from one; a RECOVERY frame names them, spec 8.3)")
    again = run_capsule("put", p, "--text", "after", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == b""  # said once, by the writer that dropped it
    rep = json.loads(invoke("verify", str(p), "--json").stdout)
    assert rep["ok"] and rep["recoveries"] == [{"offset": committed, "seq": 3, "bytes": lost}]
    assert f"recovery at offset {committed} (seq 3): a writer dropped a torn tail of {lost} bytes" in \
        invoke("verify", str(p)).stdout


NOT_CAPSULES: dict[str, Callable[[Path], bytes]] = {
    "text-file": lambda _: b"hello, I am a shopping list\n",
    "empty-file": lambda _: b"",
    "random-bytes": lambda _: bytes(range(256)) * 3,
    "truncated-header": lambda p: make_capsule(p).read_bytes()[: C.HEADER_SIZE // 2],
}


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
@pytest.mark.parametrize("kind", sorted(NOT_CAPSULES))
def test_not_a_capsule_is_data_error(tmp_path: Path, kind: str, command: str) -> None:
    p = tmp_path / "thing.capsule"
    data = NOT_CAPSULES[kind](p)
    p.write_bytes(data)
    r = invoke(command, str(p), *COMMAND_ARGS[command])
    assert r.exit_code == 1, r.output
    assert_no_crash(r)
    assert_one_line_error(r.stderr, prefix="capsule: ")
    assert p.read_bytes() == data
    if command == "verify":
        rep = json.loads(invoke("verify", str(p), "--json").stdout)
        assert rep["ok"] is False and set(rep["first_error"]) == FIRST_ERROR_KEYS


def test_not_a_capsule_subprocess(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_bytes(b"not a capsule at all\n")
    for command in ("open", "log"):
        proc = run_capsule(command, p, cwd=tmp_path)
        assert proc.returncode == 1, text(proc.stderr)
        assert_one_line_error(text(proc.stderr))
    proc = run_capsule("verify", p, "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


# --- read-only commands never write -------------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, int, int, list[str]]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_size, sorted(os.listdir(path.parent))


@pytest.mark.parametrize("command", ["open", "log", "verify"])
@pytest.mark.parametrize("state", ["clean", "torn-tail"])
def test_read_only_commands_never_modify_the_file(tmp_path: Path, state: str, command: str) -> None:
    p = tmp_path / "a.capsule"
    if state == "clean":
        make_capsule(p)
    else:
        make_torn(p)  # a writer would truncate this tail; a reader must not
    # An mtime far in the past makes any write visible whatever the clock granularity.
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = _snapshot(p)
    # The real console script (human output) and the in-process app (JSON output).
    proc = run_capsule(command, p, cwd=tmp_path)
    assert proc.returncode == 0, text(proc.stderr)
    assert _snapshot(p) == before, "bytes, mtime and directory (no lock file) must be unchanged"
    r = invoke(command, str(p), "--json")
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)
    assert _snapshot(p) == before, "bytes, mtime and directory (no lock file) must be unchanged"


# --- help -----------------------------------------------------------------------------------


def _command_name(info: typer.models.CommandInfo) -> str:
    if info.name:
        return info.name
    assert info.callback is not None
    return info.callback.__name__.lower().replace("_", "-")


REGISTERED = [_command_name(c) for c in app.registered_commands]


def test_registered_commands_are_the_documented_set() -> None:
    # Guards the parametrisation below against silently testing nothing.
    assert {"init", "put", "open", "log", "verify"} <= set(REGISTERED)
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assert set(REGISTERED) == set(group.commands)


@pytest.mark.parametrize("name", REGISTERED)
def test_every_command_has_help_with_an_example(name: str) -> None:
    r = invoke(name, "--help")
    assert r.exit_code == 0, r.output
    assert "Example" in r.stdout, f"`capsule {name} --help` has no Example"
    assert re.search(rf"capsule {re.escape(name)}\b", r.stdout), "the example must show this command"
    short = invoke(name, "-h")
    assert short.exit_code == 0 and short.stdout == r.stdout


def test_top_level_help_lists_every_command(tmp_path: Path) -> None:
    proc = run_capsule("--help", cwd=tmp_path)
    assert proc.returncode == 0
    out = text(proc.stdout)
    for name in REGISTERED:
        assert re.search(rf"\b{re.escape(name)}\b", out), name


def test_no_arguments_shows_help_not_a_traceback(tmp_path: Path) -> None:
    proc = run_capsule(cwd=tmp_path)
    assert proc.returncode in (0, 2)
    assert "Usage" in text(proc.stdout) + text(proc.stderr)
    assert "Traceback" not in text(proc.stderr)


def test_time_options_take_int_ns_and_name_themselves(tmp_path: Path) -> None:
    # questions review: --since/--until refused int ns (--valid-at takes them), and a bad
    # --until was reported as "until 'garbage'"
    p = str(make_capsule(tmp_path / "a.capsule", clock=fixed_clock))

    def found(out: str) -> int:
        doc = json.loads(out)
        return len(doc["events"] if isinstance(doc, dict) else doc)

    for verb in (["list", p], ["search", p, "alpha"], ["timeline", p]):
        got = invoke(*verb, "--since", str(FIXED_NS), "--until", str(FIXED_NS), "--json")
        assert got.exit_code == 0 and found(got.stdout) >= 1, got.output
        none = invoke(*verb, "--since", str(FIXED_NS + 1), "--json")
        assert none.exit_code == 0 and found(none.stdout) == 0, none.output
        for opt, bad, why in (("--until", "garbage", "is not an ISO-8601 time, int ns or a time ago"),
                              ("--since", str(1 << 63), "is outside 1970-01-01")):
            r = invoke(*verb, opt, bad)
            assert r.exit_code == 2 and f"capsule: error: {opt} '{bad}' {why}" in r.stderr, r.stderr


def test_an_interruption_after_a_commit_says_the_commit_stands(tmp_path: Path) -> None:
    # the new-user trial: Ctrl-C after `put --jsonl` had committed (while indexing or printing)
    # said only "interrupted", exit 130, and a retry added every line again (new times)
    p = make_capsule(tmp_path / "a.capsule")
    script = f"""
import signal, typer, capsule
from capsule_cli._errors import Interrupted, run_app
app = typer.Typer()
@app.command()
def go() -> None:
    with capsule.open({str(p)!r}, "a") as cap:
        with cap.commit() as tx:
            tx.remember("committed before the signal")
        raise Interrupted(signal.SIGINT)
@app.command()
def other() -> None:
    raise Interrupted(signal.SIGINT)
@app.command()
def during() -> None:
    from capsule.format.file import WriteHandle
    real = WriteHandle.sync
    def cut(self) -> None:  # the signal as the fsync returns: the commit is there, not yet noted
        real(self)
        raise Interrupted(signal.SIGINT)
    with capsule.open({str(p)!r}, "a") as cap:
        WriteHandle.sync = cut
        try:
            with cap.commit() as tx:
                tx.remember("written as the signal came")
        finally:
            WriteHandle.sync = real
run_app(app)
"""
    r = subprocess.run([sys.executable, "-c", script, "go"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130
    assert r.stderr == f"capsule: interrupted after {p}: commit 3 (seq 4) was written and stands\n", r.stderr
    assert any(m.text == "committed before the signal" for m in capsule.open(p).records("memory"))
    r = subprocess.run([sys.executable, "-c", script, "other"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (130, "capsule: interrupted\n")
    r = subprocess.run([sys.executable, "-c", script, "during"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stderr == (f"capsule: interrupted after {p}: commit 4 (seq 6) was being "
                                                "written and may stand (capsule log)\n"), r.stderr
    assert any(m.text == "written as the signal came" for m in capsule.open(p).records("memory"))


def test_a_meta_key_given_twice_is_refused(tmp_path: Path) -> None:
    # new-user trial: --meta a=1 --meta a=2 kept a=2 without a word
    p = make_capsule(tmp_path / "a.capsule")
    before = p.read_bytes()
    for verb in (["put", str(p), "--text", "x"], ["list", str(p)], ["search", str(p), "alpha"]):
        r = invoke(*verb, "--meta", "a=1", "--meta", "a=2")
        assert r.exit_code == 2 and "capsule: error: --meta a is given twice" in r.stderr, r.stderr
    assert p.read_bytes() == before
