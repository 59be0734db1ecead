"""Regressions from a fresh-context review of portability and read-only safety: outputs that
must never be replaced, ISO-8601 times that lost their fraction, file names that are not UTF-8,
times outside a capsule's range, and the writer lock through a symbolic link. The CLI ones run
`capsule` in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.format.records import parse_iso_time


def cli(*args: str | Path | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("capsule"))
    r = subprocess.run([exe, *(a if isinstance(a, bytes) else str(a) for a in args)], capture_output=True,
                       text=True, errors="backslashreplace", timeout=120, cwd=cwd,
                       env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return r


def small(path: Path, text: str = "keep me") -> Path:
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.remember(text)
    return path


# --- report -o replaced whatever stood at the output path --------------------------------------


def test_report_never_replaces_a_file_without_force_nor_a_fifo_or_the_capsule(tmp_path: Path) -> None:
    a, b = small(tmp_path / "a.capsule"), small(tmp_path / "b.capsule", "another agent")
    before = b.read_bytes()
    r = cli("report", a, "-o", b)
    assert r.returncode == 2 and "exists (use --force to replace it)" in r.stderr
    assert b.read_bytes() == before
    fifo = tmp_path / "p.html"
    os.mkfifo(fifo)
    for args in (["report", a, "-o", fifo, "--force"], ["export", a, "-o", fifo, "--force"]):
        r = cli(*args)
        assert r.returncode == 2 and "not a regular file" in r.stderr, args
        assert fifo.is_fifo()
    r = cli("report", a, "-o", a, "--force")
    assert r.returncode == 2 and "is the capsule being read" in r.stderr
    link = tmp_path / "l.html"
    link.symlink_to(b)
    assert cli("report", a, "-o", link).returncode == 2
    r = cli("report", a, "-o", link, "--force")  # the link itself is replaced, its target never written
    assert r.returncode == 0, r.stderr
    assert b.read_bytes() == before and not link.is_symlink() and "<html" in link.read_text()[:200].lower()
    out = tmp_path / "r.html"
    assert cli("report", a, "-o", out).returncode == 0
    assert cli("report", a, "-o", out).returncode == 2
    assert cli("report", a, "-o", out, "--force").returncode == 0
    r = cli("report", a, "-o", tmp_path / "nowhere" / "r.html")
    assert r.returncode == 2 and "no such folder" in r.stderr


# --- "2026-01-05 09:30:00.5Z" lost its fraction ----------------------------------------------------


@pytest.mark.parametrize("text", ["2026-01-05 09:30:00.5Z", "2026-01-05T09:30:00,5Z", "2026-01-05 09:30:00,500+00:00",
                                  "20260105T093000.5Z"])
def test_every_iso_spelling_keeps_the_fraction(text: str) -> None:
    assert parse_iso_time(text) == parse_iso_time("2026-01-05T09:30:00.500000000Z")


def test_a_space_separated_time_filters_and_stores_exactly(tmp_path: Path) -> None:
    f = tmp_path / "f.capsule"
    lines = tmp_path / "f.jsonl"
    lines.write_text('{"text":"t1","time":"2026-01-05T09:30:00.5Z"}\n{"text":"t2","time":"2026-01-05 09:30:00.5Z"}\n')
    small(f, "older")
    assert cli("put", f, "--jsonl", lines).returncode == 0
    got = json.loads(cli("list", f, "--json").stdout)
    assert sorted(r["time"] for r in got if r["text"] in ("t1", "t2")) == ["2026-01-05T09:30:00.5Z"] * 2
    for until in ("2026-01-05 09:30:00.4Z", "2026-01-05T09:30:00,4Z"):
        got = json.loads(cli("list", f, "--since", "2026-01-05", "--until", until, "--json").stdout)
        assert got == [], until  # both at .5: after .4, whatever the spelling


# --- a file name that is not UTF-8 crashed --json and report -o --------------------------------------


def test_a_capsule_whose_name_is_not_utf8_opens_reports_and_packs(tmp_path: Path) -> None:
    name = b"\xff.capsule"
    try:
        path = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name)))
        small(path)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    doc = json.loads(cli("open", path, "--json").stdout)
    assert doc["records"] == 1 and doc["file"].endswith("\udcff.capsule")
    assert json.loads(cli("report", path, "--json").stdout)
    r = cli("report", path, "-o", tmp_path / "r.html")
    assert r.returncode == 0 and "\\udcff" in (tmp_path / "r.html").read_text()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.md").write_text("a document about deploys\n")
    Path(os.fsdecode(os.path.join(os.fsencode(docs), b"\xfd.md"))).write_text("a name that is not UTF-8\n")
    r = cli("pack", docs, "-o", tmp_path / "d.capsule", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    # --json escapes the undecodable byte as every path (\udcfd), the warning shows it
    assert rep["files"] == 1 and rep["skipped"] == [{"path": "\udcfd.md", "reason": "its name is not UTF-8 (rename it)"}]
    assert "skipped \\udcfd.md" in r.stderr


# --- a valid time outside 1970..2262 was "not an ISO-8601 time" ---------------------------------------


def test_times_outside_the_range_say_so(tmp_path: Path) -> None:
    f = small(tmp_path / "f.capsule")
    for args, want in ((["list", f, "--since", "1969-12-31"], "since '1969-12-31' is outside 1970-01-01 .. 2262-04-11"),
                       (["list", f, "--until", "2263-01-01"], "until '2263-01-01' is outside"),
                       (["search", f, "x", "--since", "1969-01-01"], "is outside 1970-01-01"),
                       (["state", f, "--at", "1900-01-01"], "'1900-01-01' is outside 1970-01-01 .. 2262-04-11"),
                       (["state", f, "--valid-at", "1960-01-01"], "is outside 1970-01-01"),
                       (["list", f, "--since", "garbage"], "since 'garbage' is not an ISO-8601 time")):
        r = cli(*args)
        assert r.returncode == 2 and want in r.stderr, (args, r.stderr)


# --- the writer lock through a symbolic link did not name its holder ----------------------------------


def test_the_lock_through_a_link_names_the_holder(tmp_path: Path) -> None:
    real = small(tmp_path / "a.capsule")
    (tmp_path / "other").mkdir()
    link = tmp_path / "other" / "l.capsule"
    link.symlink_to(real)
    for holder, asker in ((real, link), (link, real)):
        with capsule.open(holder, "a"):
            r = cli("put", asker, "--text", "x")
            assert r.returncode != 0 and f"locked by pid {os.getpid()}" in r.stderr, (holder, r.stderr)
    assert not (tmp_path / "other" / "l.capsule.lock").exists()


# --- a pull killed with kill -9 left its temporary file (up to the capsule's size) forever ------------


def test_a_pull_removes_the_temporaries_of_killed_pulls_but_not_a_live_ones(tmp_path: Path) -> None:
    import fcntl
    import time

    import capsule.sync

    src = small(tmp_path / "a.capsule")
    url = f"file://{tmp_path}/remote/a"
    capsule.sync.push(src, url)
    dest = tmp_path / "here"
    dest.mkdir()
    dead = [dest / ".b.capsule.pull-0123456789ab", dest / ".b.capsule.pull-ba9876543210"]
    for d in dead:
        d.write_bytes(b"x" * 4096)
    old = time.time() - 3600
    os.utime(dead[0], (old, old))  # a dead pull's: nobody holds it, untouched for an hour
    os.utime(dead[1], (old, old))
    live = os.open(dead[1], os.O_RDONLY)
    fcntl.flock(live, fcntl.LOCK_EX)  # a live pull's: held
    try:
        capsule.sync.pull(url, dest / "b.capsule")
        assert not dead[0].exists() and dead[1].exists()
    finally:
        os.close(live)
    assert sorted(p.name for p in dest.iterdir()) == [".b.capsule.pull-ba9876543210", "b.capsule"]
