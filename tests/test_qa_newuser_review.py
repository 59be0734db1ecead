"""A new user's first hour, reviewed with a fresh context: regression tests for what it found."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import capsule
from tests.clirun import CAPSULE_BIN, capsule_cli


@pytest.mark.parametrize("args", [["state"], ["state", "--json"], ["log"], ["list"]])
def test_a_reader_of_stdout_that_went_away_ends_the_command_as_a_closed_pipe_does(
        tmp_path: Path, args: list[str]) -> None:
    """`capsule state | head` exited 1, the "bad capsule" status, with no message (rich, and typer for
    a write to sys.stdout.buffer, turn a broken pipe into exit 1); the other commands end quietly."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(50):
            tx.remember(f"memory number {i}")
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        proc = subprocess.run([str(CAPSULE_BIN), args[0], str(p), *args[1:]], stdout=w, stderr=subprocess.PIPE,
                              timeout=120, check=False)
    finally:
        os.close(w)
    assert proc.returncode == 141, (proc.returncode, proc.stderr)
    assert proc.stderr == b""


def test_init_where_no_file_can_be_made_says_so() -> None:
    """`capsule init /proc/x.capsule` said "no such capsule" for a file it was asked to create."""
    r = capsule_cli("init", "/proc/x.capsule", ok=False)
    assert r.returncode == 2
    assert "cannot create it" in r.stderr and "no such capsule" not in r.stderr
    with pytest.raises(capsule.CapsuleNotFound, match=r"/proc/y.capsule: cannot create it: No such file"):
        capsule.create("/proc/y.capsule")


def test_timeline_counts_a_commits_kinds_without_building_every_record(tmp_path: Path) -> None:
    """`timeline` of three commits took 3 s at 1M records: each record was decoded whole to count
    its kind. The counts now come from a decode of the kinds alone, which must agree with the
    full one, and a payload it cannot read still names its damage."""
    from capsule.core.errors import CorruptError
    from capsule.format import canonical as canon
    from capsule.format.commit import record_kinds
    from capsule.questions.timeline import _kind_counts

    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(30):
                tx.remember(f"m{i}", tags=["t"], meta={"kind": "not the record's"})
            tx.note("a note")
            tx.decide("ship it", rationale="tests pass")
        cap.tasks.add("t1")
        cap.run_once("k", lambda: 1)
    with capsule.open(p) as cap:
        events = cap.timeline().to_dict()["events"]
    summaries = [e["summary"] for e in events if e["kind"] == "commit"]
    assert any("(decision 1, memory 30, note 1)" in s for s in summaries), summaries
    payload = canon.pack([{"kind": "memory", "text": "x", "time": 1}, {"kind": "note", "text": "y", "time": 2},
                          {"kind": "memory", "nested": [[{"kind": "task"}]], "time": 3}])
    assert _kind_counts(payload, 0, 0) == {k: n for k, n in [("memory", 2), ("note", 1)]}
    assert _kind_counts(payload, 0, 0) == __import__("collections").Counter(k for k, _ in record_kinds(payload, 0, 0))
    for bad in (payload[:-3], canon.pack([{"text": "no kind"}]), canon.pack([{"kind": 7}])):
        with pytest.raises(CorruptError):
            _kind_counts(bad, 0, 0)


def test_small_messages(tmp_path: Path) -> None:
    """The review's nits: a non-UTF-8 query was searched (put refuses such text); `--deep` was answered
    'Possible options: --help'; demoting a promoted memory's old id did not say it had been promoted."""
    p = tmp_path / "a.capsule"
    capsule_cli("init", p)
    rid = capsule_cli("put", p, "--text", "a fact").stdout.strip()
    r = capsule_cli("search", p, "fact\udcff", ok=False)
    assert r.returncode == 2 and "query is not valid Unicode" in r.stderr
    with capsule.open(p) as cap, pytest.raises(capsule.UsageError, match="not valid Unicode"):
        cap.search("\ud800")
    r = capsule_cli("verify", p, "--deep", ok=False)
    assert "No such option: --deep" in r.stderr and "Possible options" not in r.stderr
    assert "Possible options: --strict, --trust" in capsule_cli("verify", p, "--strcit", ok=False).stderr
    capsule_cli("promote", p, rid[:12], "--tier", "validated")
    r = capsule_cli("demote", p, rid[:12], "--tier", "scratch", ok=False)
    assert r.returncode == 2 and "promoted or demoted to a new id" in r.stderr
    assert "promoted or demoted" in capsule_cli("get", p, rid[:12]).stdout


def test_a_reader_that_leaves_in_the_middle_of_a_large_document_is_a_closed_pipe(tmp_path: Path) -> None:
    """The second attack: `list --json | head -c 10` exited 0 with 563 KB never written. The pipe's
    reader left during one large write, which returned short; BufferedWriter passed the count on
    and dropped the rest, so nothing said the output was cut."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(3000):
            tx.remember(f"line {i} some text here")
    for args in (["list", str(p), "--limit", "3000", "--json"], ["state", str(p), "--json"]):
        proc = subprocess.Popen([str(CAPSULE_BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(10)) == 10  # the reader takes a little, then goes away mid-write
        proc.stdout.close()
        rc = proc.wait(60)
        err = proc.stderr.read()
        proc.stderr.close()
        assert rc == 141, (args, rc, err)
        assert err == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_export_to_a_full_stdout_is_a_write_error_like_every_command(tmp_path: Path) -> None:
    """`export -o - > /dev/full` exited 2 (used wrongly) where every other command exits 1."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("x")
    for args in (["export", str(p), "-o", "-"], ["list", str(p), "--json"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([str(CAPSULE_BIN), *args], stdout=full, stderr=subprocess.PIPE, timeout=60,
                                  check=False)
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr)
        assert b"cannot write output: No space left on device" in proc.stderr


def _slow_nonblocking_reader(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run ``capsule ARGS`` into a pipe whose write end is O_NONBLOCK (as a parent such as node
    may leave it), with a reader that starts after a second: (status, stdout, stderr)."""
    import fcntl
    import time

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    proc = subprocess.Popen([str(CAPSULE_BIN), *args], stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    time.sleep(1.0)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    rc = proc.wait(60)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    return rc, b"".join(chunks), err


def test_a_slow_reader_of_a_non_blocking_pipe_gets_every_byte(tmp_path: Path) -> None:
    """The third attack: into a non-blocking pipe a slow reader lost megabytes of `export -o -`
    (exit 0, 'wrote -: 100000 rows'), and `list --json` / `state --json` failed after 64 KiB."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(4000):
            tx.remember(f"line {i} " + "some text here " * 10)
    for args in (["export", str(p), "-o", "-"], ["list", str(p), "--json", "-n", "4000"], ["state", str(p), "--json"]):
        full = subprocess.run([str(CAPSULE_BIN), *args], capture_output=True, check=True, timeout=60).stdout
        assert len(full) > 1 << 18
        rc, got, err = _slow_nonblocking_reader(args)
        assert (rc, got) == (0, full), (args, rc, len(got), len(full), err)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_an_export_that_cannot_read_its_input_is_not_an_output_error() -> None:
    """The third attack on 550d209: a read of the capsule that failed (EINVAL, no file name) was
    reported as 'cannot write output' with exit 1 under `-o -`; it is the input's error (exit 2)."""
    r = capsule_cli("export", "/proc/self/clear_refs", "-o", "-", ok=False)
    assert r.returncode == 2 and "cannot write output" not in r.stderr
