"""Concurrency: lock-free readers racing a writer, and the single-writer lock.

Readers never lock and see the snapshot fixed at the last commit they observed:
a view is always a committed prefix of the file, however the reader's open
interleaves with the writer's append. Writers exclude each other with an
exclusive lock and the loser is told who holds it (pid and host).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.core import constants as C

# The writer appends in small chunks with pauses (pwrite may legally return
# short; the library loops), so readers very often open while a commit is
# half-written: exactly the race a committed-prefix view must survive.
WRITER = r'''
import gc
import os
import sys
import time

import capsule
import capsule.format.file

def slow_pwrite(fd, data, offset):
    time.sleep(0.0003)
    return os.pwrite(fd, data[:700], offset)

capsule.format.file._pwrite = slow_pwrite
path, done = sys.argv[1], sys.argv[2]
sizes = [1, 3, 1, 7, 2, 30, 1, 1, 5, 150, 2, 1, 9, 3, 60, 1, 2, 2, 11, 1] * 6
sizes[50] = 4200  # over INDEX_EVERY_RECORDS: an INDEX + TABLE inside a commit
cap = capsule.open(path, "a")
for i, n in enumerate(sizes):
    with cap.commit() as tx:
        for j in range(n):
            tx.remember(f"commit {i} record {j}", meta={"i": i}, embedding=[float(j), 1.0] if j % 3 else None)
    if i % 37 == 36:
        # close() writes an INDEX + TABLE; readers then take the fast path.
        cap.close()
        cap = capsule.open(path, "a")
    time.sleep(0.002)
cap.close()
open(done, "w").close()
'''

READER = r'''
import hashlib
import json
import os
import sys

import capsule

path, done = sys.argv[1], sys.argv[2]

def view(cap):
    ids = [r.id for r in cap.records()]
    for rid in ids[:1] + ids[-1:]:  # lookups by id (index tables + replayed tail) agree
        assert cap.get(rid).id == rid
    h = hashlib.sha256("".join(ids).encode()).hexdigest()
    return {"k": len(ids), "n": len(cap), "h": h, "sr": cap.state_root, "root": cap.root}

try:
    follower = capsule.open(path)  # one long-lived reader that refresh()es
    while True:
        last = os.path.exists(done)
        with capsule.open(path) as cap:  # and a fresh open every time
            print(json.dumps({"how": "open", **view(cap)}), flush=True)
        moved = follower.refresh()
        print(json.dumps({"how": "refresh", "moved": moved, **view(follower)}), flush=True)
        if last:
            break
    follower.close()
except BaseException as e:
    print("ERR " + repr(e), flush=True)
    raise
'''


def views_in_thread(path: Path, done: Path, out: list[dict[str, Any]], errors: list[BaseException]) -> None:
    """The same reader loop in a thread of the test process."""
    try:
        while True:
            last = done.exists()
            with capsule.open(path) as cap:
                ids = [r.id for r in cap.records()]
                out.append({"how": "thread", "k": len(ids), "n": len(cap),
                            "h": hashlib.sha256("".join(ids).encode()).hexdigest(), "sr": cap.state_root,
                            "root": cap.root})
            if last:
                return
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def state_root_of(ids: list[str]) -> str:
    """13.1, recomputed independently (tests/spec_ref.py)."""
    from tests.spec_ref import state_root

    return state_root(bytes.fromhex(i) for i in ids)


def test_reader_views_are_committed_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"
    done = tmp_path / "writer-done"
    capsule.create(path).close()
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)
    # The reader writes its views to a file, not a pipe: a pipe nobody drains
    # while we wait for the writer would stall the reader and hide the race.
    rlog = tmp_path / "reader.out"
    writer = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(path), str(done)],
                              stderr=subprocess.PIPE, text=True)
    with rlog.open("w") as rfile:
        reader = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(path), str(done)],
                                  stdout=rfile, stderr=subprocess.PIPE, text=True)
    thread_views: list[dict[str, Any]] = []
    thread_errors: list[BaseException] = []
    t = threading.Thread(target=views_in_thread, args=(path, done, thread_views, thread_errors))
    t.start()
    try:
        _, werr = writer.communicate(timeout=120)
        _, rerr = reader.communicate(timeout=120)
    finally:
        for p in (writer, reader):
            if p.poll() is None:
                p.kill()
                p.wait()
        t.join(120)
    rout = rlog.read_text()
    assert writer.returncode == 0, werr
    assert reader.returncode == 0 and "ERR" not in rout, rout[-2000:] + rerr[-2000:]
    assert not thread_errors, thread_errors

    with capsule.open(path) as cap:
        final = [r.id for r in cap.records()]
        rows = cap.log()
    # Committed prefixes: the record counts at each commit boundary, their
    # hash chain over the ordered ids, and the Merkle root each commit names.
    boundaries: dict[int, str] = {}
    roots: dict[int, set[str]] = {}
    h = hashlib.sha256()
    pos = 0
    for row in rows:
        for rid in final[pos : pos + row.records]:
            h.update(rid.encode())
        pos += row.records
        boundaries[pos] = h.hexdigest()
        roots.setdefault(pos, set()).add(row.root)
    assert pos == len(final)

    views = [json.loads(line) for line in rout.splitlines()] + thread_views
    seen_k: set[int] = set()
    state_roots: dict[int, str] = {}
    for v in views:
        k = v["k"]
        assert k in boundaries, f"{v['how']} view of {k} records is not a commit boundary"
        assert v["h"] == boundaries[k], f"{v['how']} view of {k} records is not the first {k} records"
        assert v["n"] == k  # len() agrees with what iteration returned
        assert v["root"] in roots[k]
        if k not in state_roots:
            state_roots[k] = state_root_of(final[:k])
        assert v["sr"] == state_roots[k]
        seen_k.add(k)
    # Not vacuous: the readers saw the file grow through many commits, and the
    # last view of each reader (taken after the writer finished) is complete.
    assert len(seen_k) >= 10, sorted(seen_k)
    assert views[-1]["k"] == len(final) and thread_views[-1]["k"] == len(final)
    # The long-lived reader moved forward by refresh() more than once, and
    # only when the file had really changed.
    follower = [v for v in views if v["how"] == "refresh"]
    assert len({v["k"] for v in follower}) >= 3
    for a, b in zip(follower, follower[1:], strict=False):
        assert b["k"] >= a["k"] and b["moved"] == (b["root"] != a["root"])


# --- the writer lock ------------------------------------------------------------

HOLDER = r'''
import sys

import capsule

cap = capsule.open(sys.argv[1], "a")
print("READY", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
cap.close()
'''


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    path = tmp_path / "agent.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.remember("the build server is ci-7", tags=["infra"])
    return path


@pytest.fixture
def holder(tmp_path: Path, populated: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the writer lock on ``populated``."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    p = subprocess.Popen([sys.executable, str(script), str(populated)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "READY\n"
    yield p
    # Closing stdin releases a live holder; communicate() also reaps a killed
    # one and closes all three pipes.
    p.communicate(input="", timeout=30)


def test_second_writer_in_another_process_is_locked(populated: Path,
                                                    holder: subprocess.Popen[str]) -> None:
    with pytest.raises(capsule.Locked) as ei:
        capsule.open(populated, "a")
    e = ei.value
    assert e.pid == holder.pid and e.host == socket.gethostname()
    assert str(holder.pid) in str(e) and socket.gethostname() in str(e)
    assert isinstance(e, capsule.UsageError)


def test_second_writer_in_this_process_is_locked(populated: Path) -> None:
    with capsule.open(populated, "a") as cap:
        with pytest.raises(capsule.Locked) as ei:
            capsule.open(populated, "a")
        assert ei.value.pid == os.getpid() and ei.value.host == socket.gethostname()
        assert f"pid {os.getpid()}" in str(ei.value)
        # The failed attempt must not have disturbed the holder.
        with cap.commit() as tx:
            rid = tx.remember("still writable")
    with capsule.open(populated) as r:
        assert r.get(rid).text == "still writable"


def test_other_process_sees_our_pid(tmp_path: Path, populated: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, sys, capsule\n"
        "try:\n"
        "    capsule.open(sys.argv[1], 'a')\n"
        "    print(json.dumps({'locked': False}))\n"
        "except capsule.Locked as e:\n"
        "    print(json.dumps({'locked': True, 'pid': e.pid, 'host': e.host}))\n"
    )
    with capsule.open(populated, "a"):
        got = subprocess.run([sys.executable, str(probe), str(populated)], capture_output=True, text=True,
                             timeout=60, check=True)
    assert json.loads(got.stdout) == {"locked": True, "pid": os.getpid(), "host": socket.gethostname()}
    # Released on close: now the other process gets the lock.
    got = subprocess.run([sys.executable, str(probe), str(populated)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(got.stdout) == {"locked": False}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_put_against_locked_capsule(populated: Path, holder: subprocess.Popen[str]) -> None:
    before = populated.read_bytes()
    r = cli("put", str(populated), "--text", "blocked")
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:"), r.stderr
    assert "Traceback" not in r.stderr and str(holder.pid) in lines[0]
    assert r.stdout == ""
    assert populated.read_bytes() == before
    # Readers take no lock: the read-only commands work while the writer holds it.
    assert cli("open", str(populated), "--json").returncode == 0
    assert cli("verify", str(populated)).returncode == 0


def test_readers_take_no_lock(populated: Path, holder: subprocess.Popen[str]) -> None:
    with capsule.open(populated) as r:
        assert len(r) == 1
        assert next(r.records()).text == "the build server is ci-7"
    assert capsule.verify(populated).ok


def test_open_reader_does_not_block_writer(populated: Path) -> None:
    with capsule.open(populated) as r, capsule.open(populated, "a") as w:
        assert len(r) == len(w) == 1


def test_killed_writer_releases_lock(tmp_path: Path, populated: Path,
                                     holder: subprocess.Popen[str]) -> None:
    # The kernel drops a flock when its holder dies; the stale .lock file left
    # behind (it names a dead pid) must not block or mislead the next writer.
    holder.kill()
    holder.wait(30)
    with capsule.open(populated, "a") as w:
        with pytest.raises(capsule.Locked) as ei:
            capsule.open(populated, "a")
        assert ei.value.pid == os.getpid()
        with w.commit() as tx:
            tx.remember("after the holder died")
    assert capsule.verify(populated).ok


@pytest.mark.parametrize("case", ["still-referenced", "dropped-after-torn-open"])
def test_closed_writer_releases_lock(tmp_path: Path, case: str) -> None:
    # close() must release the writer lock, whether or not the Capsule object
    # is still referenced (a variable, a Transaction's back-reference, a
    # traceback). Today a writer that opened a capsule with an INDEX table maps
    # the table with mmap, mmap keeps a dup() of the locked descriptor, and the
    # flock lives until the garbage collector frees the mmap. After opening a
    # file with a torn tail the Capsule even sits in a reference cycle (load()
    # keeps the CorruptError whose traceback holds load's own frame and its
    # snapshot), so dropping the last reference is not enough either.
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        for i in range(C.INDEX_ON_CLOSE_RECORDS):  # close() then writes INDEX + TABLE
            tx.remember(f"m{i}")
    del cap, tx
    if case == "dropped-after-torn-open":
        with path.open("ab") as f:
            f.write(b"\0" * 100)  # a torn tail, as a crashed append leaves
    first = capsule.open(path, "a")
    with first.commit() as tx:
        tx.remember("one more")
    first.close()
    assert first.closed
    if case == "dropped-after-torn-open":
        del first, tx
    try:
        second = capsule.open(path, "a")
    except capsule.Locked as e:
        pytest.fail(f"closed writer still holds the lock: {e}")
    second.close()


def test_reader_snapshot_is_fixed_until_refresh(populated: Path) -> None:
    with capsule.open(populated) as r, capsule.open(populated, "a") as w:
        before_ids = [m.id for m in r.records()]
        before_root, before_state, before_size = r.root, r.state_root, r.size
        with w.commit() as tx:
            new = [tx.remember(f"new {i}") for i in range(3)]
        with w.commit() as tx:
            new.append(tx.remember("newer"))
        # The writer sees its own commits at once; a writer's refresh is a no-op.
        assert len(w) == 5 and w.refresh() is False
        # The reader's snapshot is unchanged, including for lookups by id.
        assert [m.id for m in r.records()] == before_ids
        assert (len(r), r.root, r.state_root, r.size) == (1, before_root, before_state, before_size)
        assert new[0] not in r
        with pytest.raises(capsule.NotFound):
            r.get(new[0])
        assert r.refresh() is True
        assert [m.id for m in r.records()] == before_ids + new
        assert len(r) == 5 and r.root == w.root and r.state_root == w.state_root
        assert r.get(new[-1]).text == "newer"
        assert r.refresh() is False
