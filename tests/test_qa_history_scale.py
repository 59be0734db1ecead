"""Findings of a review at scale (1M records, a history mostly forgotten), each a regression
test: the task queue read every record of the file, the dead-document mask compared ids as
strings, ``put --jsonl`` from an endless stream had no bound, and JSON errors lost their column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.core.errors import InvalidRecordError
from capsule.ingest.jsonl import JsonLines


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_the_task_queue_reads_no_memory_frames(tmp_path: Path) -> None:
    # `capsule tasks` on a 1M-record file with one task read all 1.48 GB (store.records scans every
    # frame); the queue now walks by the INDEX kind counts (9.2)
    p = tmp_path / "t.capsule"
    with capsule.create(p) as cap:
        cap.tasks.add("only", name="one task")
        for c in range(40):
            with cap.commit() as tx:
                tx.put_many([{"text": f"memory {c}-{i} " + "words " * 30} for i in range(500)])
    size = p.stat().st_size
    with capsule.open(p) as cap:
        h = cap._store.h
        read = [0]
        pread = h.pread

        def counting(off: int, n: int) -> bytes:
            read[0] += n
            return pread(off, n)

        h.pread = counting  # type: ignore[method-assign]
        q = cap.tasks.queue()
        assert list(q.tasks) == ["only"]
    assert read[0] < size // 20, (read[0], size)


def test_listing_leaves_out_exactly_the_dead_documents(tmp_path: Path) -> None:
    # the dead mask compares raw 32-byte ids now (S32 compares and sorts strings, and NumPy's S32
    # drops trailing NUL bytes: an id ending in 0x00 must still match itself)
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            got = tx.put_many([{"text": f"fact number {i}"} for i in range(3000)])
        ids = list(got)
        gone = set(ids[::2])
        with cap.commit() as tx:
            tx.lifecycle("forget", drop=sorted(gone))
    assert any(i.endswith("00") for i in ids)  # 3000 ids: some end in a NUL byte
    with capsule.open(p) as cap:
        hits = {h.id for h in cap.search(None, k=5000)}
        found = {h.id for h in cap.search("fact number", k=5000, mode="lexical")}
    assert hits == found == set(ids) - gone


def test_one_commit_of_jsonl_is_bounded_and_batch_commits_in_parts(tmp_path: Path) -> None:
    lines = JsonLines(iter_bytes(b'{"text": "x"}\n' * 6), "stdin ", max_lines=5)
    with pytest.raises(InvalidRecordError, match="more than 5 lines, too many for one commit"):
        list(lines)
    p = tmp_path / "b.capsule"
    assert _cli("init", str(p)).returncode == 0
    body = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(25))
    r = _cli("put", str(p), "--jsonl", "-", "--batch", "10", "--json", stdin=body)
    assert r.returncode == 0, r.stderr
    log = json.loads(_cli("log", str(p), "--json").stdout)
    assert [c["records"] for c in log][-3:] == [10, 10, 5]
    # a bad line stops at its batch: the batches before it stand, and the error names the line
    r = _cli("put", str(p), "--jsonl", "-", "--batch", "1", stdin='{"text": "a"}\n{"text": "b"}\n{"text": "c\n')
    assert r.returncode == 1 and "stdin line 3: invalid JSON: " in r.stderr and "at column" in r.stderr
    assert json.loads(_cli("open", str(p), "--json").stdout)["records"] == 27
    assert _cli("put", str(p), "--text", "x", "--batch", "2").returncode == 2  # --batch goes with --jsonl


def iter_bytes(data: bytes) -> object:
    import io

    return io.BytesIO(data)


@pytest.mark.parametrize("bad, message", [('{"text": "abc\n', "Invalid control character at column 14"),
                                          ('{"text": "abc', "Unterminated string at column 10"),
                                          ("nope\n", "Expecting value at column 1")])
def test_a_json_error_says_where_on_the_line(tmp_path: Path, bad: str, message: str) -> None:
    p = tmp_path / "j.capsule"
    capsule.create(p).close()
    r = _cli("put", str(p), "--jsonl", "-", stdin=bad)
    assert r.returncode == 1 and r.stderr.strip().endswith(message), r.stderr
