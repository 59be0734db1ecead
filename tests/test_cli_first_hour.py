"""The first hour with the CLI (issue #17): what a new user meets, each cut a test.

Most tests run the installed ``capsule`` console script in a subprocess, as a
user would; the 80-column search table runs it on a pseudo-terminal. Setups are
made with the library, so a CLI bug cannot hide in the setup.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import typer.main
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
DAY = 86_400 * 10**9


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    full["COLUMNS"] = "200"
    full.update(env or {})
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, input="", capture_output=True, text=True,
                          env=full, timeout=120, check=False)


def invoke(*args: str | Path) -> Any:
    """The app in-process (typer's runner): for the many quick reads a test makes."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error: "), proc.stderr
    return lines[0]


def seeded(path: Path, n: int = 0) -> dict[str, str]:
    """A capsule with dated memories (tags, tiers, meta), a note and a decision; ``n``
    more memories make the index tables (so prefixes are looked up in TABLE frames)."""
    ids: dict[str, str] = {}
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            ids["freeze"] = tx.remember("deploys are frozen on Fridays", tags=["ops", "policy"], time=T0,
                                        meta={"n": 5}, source="runbook")
            ids["pager"] = tx.remember("alice is paged for payments outages", tags=["ops"], time=T0 + DAY,
                                       meta={"n": "5", "path": "people.md", "chunk": 2}, tier="validated")
            ids["lunch"] = tx.remember("lunch is at noon", tags=["life"], time=T0 + 2 * DAY, tier="scratch")
            ids["note"] = tx.note("checked the pager rota", time=T0 + 3 * DAY)
            ids["decision"] = tx.decide("ship on Thursday", evidence=[ids["freeze"]], time=T0 + 4 * DAY)
        for start in range(0, n, 2000):
            with cap.commit() as tx:
                for i in range(start, min(n, start + 2000)):
                    tx.remember(f"filler {i}", time=T0 - DAY - i)
    return ids


def hex_ids(cap: capsule.Capsule) -> list[str]:
    ids = cap.all_ids()  # S32: indexing would drop an id's trailing zero bytes
    return [ids[i : i + 1].tobytes().hex() for i in range(len(ids))]


# --- get, and ids by prefix ------------------------------------------------------------------------


def test_get_any_record_by_id_or_prefix(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    ids = seeded(p)
    full = run("get", p, ids["freeze"], "--json", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    doc = json.loads(full.stdout)
    assert doc["id"] == ids["freeze"] and doc["text"] == "deploys are frozen on Fridays"
    assert doc["meta"] == {"n": 5} and doc["source"] == "runbook" and doc["tags"] == ["ops", "policy"]
    short = run("get", p, ids["freeze"][:6].upper(), "--json", cwd=tmp_path)
    assert json.loads(short.stdout) == doc
    dec = run("get", p, ids["decision"][:8], cwd=tmp_path)
    assert dec.returncode == 0, dec.stderr
    assert "decision" in dec.stdout and "ship on Thursday" in dec.stdout and ids["freeze"] in dec.stdout
    note = run("get", p, ids["note"][:5], "--json", cwd=tmp_path)
    assert json.loads(note.stdout)["kind"] == "note"


def test_get_unknown_ambiguous_or_malformed_prefix_is_one_line_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    ids = seeded(p, n=3000)
    with capsule.open(p) as cap:
        assert cap._snap.segments, "setup: the records must be in index tables"
        heads = collections.Counter(rid[:4] for rid in hex_ids(cap))
    shared = next(h for h, c in heads.items() if c > 1)
    absent = next(f"{i:04x}" for i in range(1 << 16) if f"{i:04x}" not in heads)
    assert "ambiguous" in one_line_error(run("get", p, shared, cwd=tmp_path)) and shared in \
        run("get", p, shared, cwd=tmp_path).stderr
    err = one_line_error(run("get", p, absent, cwd=tmp_path))
    assert absent in err and "no record" in err
    err = one_line_error(run("get", p, "abc", cwd=tmp_path))
    assert "'abc'" in err and "4 to 64 hex digits" in err
    assert run("get", p, ids["lunch"][:7], cwd=tmp_path).returncode == 0


def test_library_resolves_prefixes_by_table_lookup_not_by_scanning(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.capsule"
    seeded(p, n=5000)
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        after_index = tx.remember("written after the last INDEX", time=T0 + 9 * DAY)
    with capsule.open(p) as cap:
        every = hex_ids(cap)
    from capsule.format import scan, store

    def no_history(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("resolving an id prefix read history")

    with capsule.open(p) as cap:  # opening replays the frames after the last INDEX; resolving reads none
        monkeypatch.setattr(store.Store, "records", no_history)
        monkeypatch.setattr(scan.Reader, "frames", no_history)
        assert cap._snap.segments and bytes.fromhex(after_index) in cap._snap.mem
        for rid in (every[0], every[len(every) // 2], every[-1], after_index):
            n = next(k for k in range(4, 65) if sum(x.startswith(rid[:k]) for x in every) == 1)
            assert cap.get(rid[:n]).id == rid
            assert cap.get(rid[:40]).id == rid  # longer than a table's 16-digit prefix column
        with pytest.raises(capsule.UsageError, match="ambiguous"):
            cap.get(collections.Counter(x[:4] for x in every).most_common(1)[0][0])


def test_decide_and_approve_take_prefixes_even_of_this_commits_records(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    ids = seeded(p)
    key = capsule.generate_key()
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:
            fresh = tx.remember("a memory of this very commit", time=T0 + 5 * DAY)
            dec = tx.decide("use it", evidence=[ids["pager"][:6], fresh[:6]], time=T0 + 5 * DAY)
            ok = tx.approve(dec[:10], key, time=T0 + 5 * DAY)
        assert [e.hex() for e in cap.get(dec).evidence] == [ids["pager"], fresh]
        assert cap.get(ok).subject.hex() == dec
        with pytest.raises(capsule.NotFound, match="evidence: no record with id prefix '0000000000'"), \
                cap.commit() as tx:
            tx.decide("nothing behind it", evidence=["0000000000"])
    # the same through the CLI, in a JSON body
    proc = run("put", p, "--kind", "decision", "--json-body",
               json.dumps({"summary": "again", "evidence": [ids["lunch"][:8]]}), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with capsule.open(p) as cap:
        assert [e.hex() for e in cap.get(proc.stdout.strip()).evidence] == [ids["lunch"]]


# --- list / records, and search without a query ----------------------------------------------------


def listed(p: Path, *args: str) -> list[str]:
    r = invoke("list", p, *args, "--json")
    assert r.exit_code == 0, r.output
    return [h["id"] for h in json.loads(r.stdout)]


def test_list_filters_newest_first(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    ids = seeded(p, n=30)
    newest = [ids[k] for k in ("decision", "note", "lunch", "pager", "freeze")]
    got = listed(p)
    assert len(got) == 20 and got[:5] == newest  # default limit 20, newest first
    assert listed(p, "--limit", "3") == newest[:3]
    assert listed(p, "--tag", "ops") == [ids["pager"], ids["freeze"]]
    assert listed(p, "--tag", "ops", "--tag", "policy") == [ids["freeze"]]
    assert listed(p, "--kind", "decision", "--kind", "note") == [ids["decision"], ids["note"]]
    assert listed(p, "--tier", "validated") == [ids["pager"]]
    assert listed(p, "--since", "2026-01-02", "--until", "2026-01-03T00:00:00Z") == [ids["lunch"], ids["pager"]]
    shown = json.loads(invoke("list", p, "--tag", "ops", "--json").stdout)[0]
    assert set(shown) == {"id", "score", "kind", "text", "tags", "meta", "time"} and shown["score"] == 0.0
    alias = invoke("records", p, "--tag", "ops")
    assert alias.exit_code == 0 and alias.stdout == invoke("list", p, "--tag", "ops").stdout
    table = run("list", p, "--tag", "ops", cwd=tmp_path).stdout
    assert ids["pager"][:8] in table and "people.md#2" in table and "runbook" in table
    # search with filters and no query lists the same records, instead of refusing
    proc = run("search", p, "--tag", "ops", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [h["id"] for h in json.loads(proc.stdout)] == [ids["pager"], ids["freeze"]]
    err = one_line_error(run("list", p, "--kind", "task", cwd=tmp_path))
    assert "kind must be one of memory, note, decision" in err


# --- one typing rule for --meta ---------------------------------------------------------------------


def test_meta_values_are_typed_the_same_on_put_and_on_filters(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    put = {v: run("put", p, "--text", f"meta {v}", "--meta", f"n={v}", cwd=tmp_path).stdout.strip()
           for v in ("5", '"5"')}  # as a user runs it; the rest in-process
    put |= {v: invoke("put", p, "--text", f"meta {v}", "--meta", f"n={v}").stdout.strip()
            for v in ("infra", "true", "1.5", "NaN")}
    with capsule.open(p) as cap:
        stored = {v: cap.get(rid).meta["n"] for v, rid in put.items()}
    assert stored == {"5": 5, '"5"': "5", "infra": "infra", "true": True, "1.5": 1.5, "NaN": "NaN"}
    for v, rid in put.items():
        for command in ("list", "search"):
            r = invoke(command, p, "--meta", f"n={v}", "--json")
            assert r.exit_code == 0, r.output
            assert [h["id"] for h in json.loads(r.stdout)] == [rid], (command, v)
    proc = run("search", p, "--meta", "n=5", "--json", cwd=tmp_path)  # and once as a user runs it
    assert [h["id"] for h in json.loads(proc.stdout)] == [put["5"]]
    helps = [invoke(c, "--help").stdout for c in ("put", "search", "list")]
    assert all("n=5 is the number 5" in " ".join(h.split()) for h in helps)


# --- pack -------------------------------------------------------------------------------------------


def test_pack_output_counts_and_plurals_and_unknown_types(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "guide.rst").write_text("Title\n=====\n\nThe deploy key lives in vault.\n")
    proc = run("pack", one, "-o", tmp_path / "one.capsule", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("packed 1 file into 1 record (+1 vindex record: the vector index parameters), "
                          "1 vector (hash embedder): "), out
    assert "None" not in out and "1 files" not in out
    opened = json.loads(run("open", tmp_path / "one.capsule", "--json", cwd=tmp_path).stdout)
    assert opened["records"] == 2 and opened["records_by_kind"] == {"memory": 1, "vindex": 1}
    (one / "page.html").write_text("<p>not read</p>")
    (one / "data.csv").write_text("a,b\n")
    (one / ".hidden.yaml").write_text("ignored: quietly\n")
    proc = run("pack", one, "-o", tmp_path / "two.capsule", "--embedder", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ("capsule: warning: ignored 2 files of other types (.csv, .html); in a folder "
                                   "pack reads .txt, .md, .markdown, .rst, .text")
    assert proc.stdout.startswith("packed 1 file into 1 record: ")
    err = one_line_error(run("pack", one / "page.html", "-o", tmp_path / "three.capsule", cwd=tmp_path))
    assert "page.html" in err and ".rst" in err and ".jsonl" in err and "not .html" in err
    assert not (tmp_path / "three.capsule").exists()
    assert ".rst" in run("pack", "--help", cwd=tmp_path).stdout


# --- the search table -------------------------------------------------------------------------------


def run_on_tty(*args: str | Path, cwd: Path, columns: int = 80) -> str:
    """Run the CLI on a pseudo-terminal ``columns`` wide; its output with ANSI codes."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_search_table_shows_origin_and_marked_snippet_in_80_columns(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    (notes / "teams").mkdir(parents=True)
    long = ("Escalations for the payments platform go through a rota that changes every week, and the "
            "person who holds the pager for payments is named in the on-call calendar, which is the source "
            "of truth for anyone who needs to reach them at night. ")
    (notes / "teams" / "payments-oncall-and-escalation.md").write_text(long * 2 + "\n\nSecond paragraph.\n")
    (notes / "misc.txt").write_text("Payments are reconciled on Mondays.\n")
    cap = tmp_path / "notes.capsule"
    assert run("pack", notes, "-o", cap, cwd=tmp_path).returncode == 0
    screen = run_on_tty("search", cap, "pager payments", cwd=tmp_path)
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", screen).splitlines() if ln.strip()]
    assert all(len(ln) <= 80 for ln in lines), "\n".join(lines)
    assert len(lines) == 3, "a header and one line per hit, never wrapped:\n" + "\n".join(lines)
    assert "notes/teams/payments" in lines[1] and "notes/misc.txt" in lines[2]  # root/path
    assert "\x1b[1mpager\x1b[0m" in screen or "\x1b[1mpayments\x1b[0m" in screen, repr(screen)
    piped = run("search", cap, "pager payments", cwd=tmp_path)
    assert "teams/payments-oncall-and-escalation.md" in piped.stdout and "misc.txt" in piped.stdout


# --- help and usage errors --------------------------------------------------------------------------

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_plain_metavars(tmp_path: Path, name: str) -> None:
    text = run(name, "--help", cwd=tmp_path, env={"COLUMNS": "100"}).stdout
    assert f"Usage: capsule {name} [OPTIONS]" in text
    assert not re.search(r"<(bool|str|int|float|path|list\[[^\]]*\]|int range)>|\{[a-z_]+\}", text), text
    assert "agent-capsule[minilm]" in text if name == "pack" else True


def test_command_list_reads_one_row_per_command_when_it_fits(tmp_path: Path) -> None:
    """`capsule --help` once kept docstring line breaks: 'decisions, constraints, identity,' then
    'open tasks, ...' on a row of its own, in a listing wide enough for both."""
    text = run("--help", cwd=tmp_path, env={"COLUMNS": "400"}).stdout
    rows = [ln for ln in text.splitlines() if ln.startswith("│")]
    listing = [ln for ln in rows if re.match(r"│ [a-z][a-z-]+ ", ln)]
    names = {ln.split()[1] for ln in listing}
    assert {"beliefs", "why", "audit", "report", "serve", "redact"} <= names, names
    continuation = [ln for ln in rows[rows.index(listing[0]):] if re.match(r"│\s{3,}\S", ln)]
    assert not continuation, "\n".join(continuation)


@pytest.mark.parametrize("argv, needle", [
    (["search", "x.capsule", "-k", "0"], "'-k' / '--top'"),
    (["put"], "Missing argument 'FILE'"),
    (["get", "x.capsule"], "Missing argument 'ID'"),
    (["list", "x.capsule", "--no-such-option"], "--no-such-option"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_errors_are_one_line_like_every_other_error(tmp_path: Path, argv: list[str], needle: str) -> None:
    err = one_line_error(run(*argv, cwd=tmp_path))
    assert needle in err and "--help" in err


# --- directories and files that are not capsules -----------------------------------------------------


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    for argv in (["put", d, "--text", "x"], ["init", d], ["get", d, "abcd"], ["list", d]):
        err = one_line_error(run(*argv, cwd=tmp_path))
        assert f"{d}: is a directory" in err, err


@pytest.mark.parametrize("command", ["open", "log", "state", "put", "search", "list", "get", "checkpoints",
                                     "tasks", "actions", "verify"])
def test_errors_about_a_file_that_is_not_a_capsule_name_it(tmp_path: Path, command: str) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello, not a capsule\n")
    extra = {"put": ["--text", "x"], "search": ["x"], "get": ["abcd"]}.get(command, [])
    proc = run(command, f, *extra, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert str(f) in proc.stderr and "not a capsule" in proc.stderr, proc.stderr
    assert f.read_text() == "hello, not a capsule\n"


# --- waiting for the writer ---------------------------------------------------------------------------

HOLDER = """
import sys, time, capsule
cap = capsule.open(sys.argv[1], "a")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
cap.close()
"""


def hold_lock(p: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(p), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_wait_for_a_writer_that_lets_go(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    holder = hold_lock(p, 1.5)
    try:
        err = one_line_error(run("put", p, "--text", "at once", cwd=tmp_path))
        assert "locked by pid" in err and "waited" not in err
        t = time.monotonic()
        proc = run("put", p, "--text", "after waiting", "--wait", "30", cwd=tmp_path)
        waited = time.monotonic() - t
    finally:
        holder.communicate(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 0.5 < waited < 20
    with capsule.open(p) as cap:
        assert cap.get(proc.stdout.strip()).text == "after waiting"


def test_wait_gives_up_after_its_timeout_naming_the_holder(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    before = p.read_bytes()
    holder = hold_lock(p, 5)
    try:
        t = time.monotonic()
        with pytest.raises(capsule.Locked, match=r"locked by pid \d+ .*\(waited 0.4 s\)"):
            capsule.open(p, "a", timeout=0.4)
        assert 0.3 < time.monotonic() - t < 3
        err = one_line_error(run("checkpoint", p, "--label", "x", "--key", tmp_path / "none.key", "--wait", "0.3",
                                 cwd=tmp_path))
        assert "none.key" in err  # keys are read before the lock is waited for
        err = one_line_error(run("put", p, "--text", "x", "--wait", "0.3", cwd=tmp_path))
        assert "waited 0.3 s" in err
        with pytest.raises(capsule.UsageError, match="timeout"):
            capsule.open(p, "r", timeout=1)
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    assert p.read_bytes() == before


# --- key rotation ---------------------------------------------------------------------------------------


def test_rotate_keys_from_the_cli(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    seeded(p)
    for name in ("old", "new"):
        assert run("keygen", "-o", tmp_path / f"{name}.key", cwd=tmp_path).returncode == 0
    assert run("checkpoint", p, "--label", "one", "--key", tmp_path / "old.key", cwd=tmp_path).returncode == 0
    err = one_line_error(run("checkpoint", p, "--label", "two", "--key", tmp_path / "new.key", cwd=tmp_path))
    assert "rotate keys first" in err
    before = p.read_bytes()
    err = one_line_error(run("rotate-keys", p, "--key", tmp_path / "new.key", "--new", tmp_path / "new.key",
                             cwd=tmp_path))
    assert "cannot rotate" in err and p.read_bytes() == before
    proc = run("rotate-keys", p, "--key", tmp_path / "old.key", "--new", tmp_path / "new.key", "--json",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    old_id = capsule.load_private_key(tmp_path / "old.key").key_id
    new_id = capsule.load_private_key(tmp_path / "new.key").key_id
    assert info["version"] == 2 and info["keys"] == [new_id] and info["revoked"] == [old_id]
    assert run("checkpoint", p, "--label", "two", "--key", tmp_path / "new.key", cwd=tmp_path).returncode == 0
    one_line_error(run("checkpoint", p, "--label", "three", "--key", tmp_path / "old.key", cwd=tmp_path))
    proc = run("verify", p, "--trust", tmp_path / "old.key.pub", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_pack_of_records_with_their_own_embeddings_never_prints_none(tmp_path: Path) -> None:
    src = tmp_path / "own.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"fact {i}", "embedding": [float(i + 1), 1.0, 0.5, 0.25]})
                             for i in range(3)) + "\n")
    r = run("pack", src, "-o", tmp_path / "own.capsule", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "None" not in r.stdout
    assert "3 vectors (embeddings from the input)" in r.stdout
