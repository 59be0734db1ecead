"""Sync after a fresh-context review (s15): an interrupted pull finished by the next writer,
store failures named as the store's, and `push --as` beside a bare relative folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
import capsule.sync as sync
from capsule.format.pending import journal_path
from capsule.sync._errors import RemoteError

CAPSULE_BIN = Path(sys.executable).with_name("capsule")

#: a pull killed (SIGKILL) in its append phase: after its first commit and half of the second
KILLED_PULL = """
import importlib, os, signal, sys
pl = importlib.import_module("capsule.sync.pull")
real, calls = pl._write, []
def _write(wh, src, a, b):
    calls.append((a, b))
    if len(calls) == 2:
        real(wh, src, a, a + (b - a) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real(wh, src, a, b)
pl._write = _write
pl.pull(sys.argv[1], sys.argv[2])
"""


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _remote_with_three_new_commits(tmp_path: Path) -> tuple[str, Path, Path]:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    url = (tmp_path / "remote").as_uri()
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("first")
    sync.push(a, url)
    sync.pull(url, b)
    with capsule.open(a, "a") as cap:
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"later {i} " + os.urandom(6000).hex())  # incompressible: torn tails span pages
    sync.push(a, url)
    return url, a, b


def test_a_writer_finishes_the_append_a_killed_pull_began(tmp_path: Path) -> None:
    """A pull killed in its append left a torn tail of the remote's bytes; the restarted agent's
    first write dropped it (8.3), so the copy and its remote had diverged for good: every
    later push and pull refused."""
    url, a, b = _remote_with_three_new_commits(tmp_path)
    before = b.stat().st_size
    p = subprocess.run([sys.executable, "-c", KILLED_PULL, url, str(b)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    torn = b.stat().st_size
    assert before < torn < a.stat().st_size and journal_path(b).exists()
    assert b.read_bytes() == a.read_bytes()[:torn]
    # the restarted agent writes first
    with capsule.open(b, "a") as cap:
        assert len(cap) == len(capsule.open(a)) and not journal_path(b).exists()
        with cap.commit() as tx:
            tx.remember("the restarted agent's first memory")
    assert b.read_bytes()[: a.stat().st_size] == a.read_bytes()  # finished, not dropped: no RECOVERY
    assert capsule.verify(b).ok
    assert sync.pull(url, b).status == "ahead"
    assert sync.push(b, url).status == "pushed"


def test_a_stale_or_damaged_journal_changes_nothing(tmp_path: Path) -> None:
    url, a, b = _remote_with_three_new_commits(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILLED_PULL, url, str(b)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL
    j = journal_path(b)
    data = bytearray(j.read_bytes())
    data[-1] ^= 1  # the journal's bytes no longer hash to its digest
    j.write_bytes(bytes(data))
    torn = b.stat().st_size
    with capsule.open(b, "a") as cap, cap.commit() as tx:  # the torn-tail rules (8.3): dropped at the write
        tx.remember("after")
    assert not j.exists() and b.stat().st_size != a.stat().st_size
    assert capsule.verify(b).ok and b.read_bytes()[:100] == a.read_bytes()[:100]
    assert torn > 0


def test_pull_leaves_no_journal_and_a_finished_copy_is_the_remote(tmp_path: Path) -> None:
    url, a, b = _remote_with_three_new_commits(tmp_path)
    assert sync.pull(url, b).status == "pulled"
    assert b.read_bytes() == a.read_bytes() and not journal_path(b).exists()


def test_a_store_that_fails_to_connect_is_a_remote_error_naming_the_url(tmp_path: Path) -> None:
    pytest.importorskip("fsspec.implementations.ftp")
    with pytest.raises(RemoteError, match=r"ftp://127\.0\.0\.1:1/x: connect"):
        sync.pull("ftp://127.0.0.1:1/x", tmp_path / "n.capsule")
    r = cli("pull", "ftp://127.0.0.1:1/x", "n.capsule", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("capsule: error: ftp://127.0.0.1:1/x: connect"), r.stderr
    assert not (tmp_path / "n.capsule").exists()


def test_push_as_beside_a_bare_relative_folder(tmp_path: Path) -> None:
    a = tmp_path / "a.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("x")
    assert cli("push", a, "rem", cwd=tmp_path).returncode == 0
    with capsule.open(a, "a") as cap, cap.commit() as tx:
        tx.remember("y")
    r = cli("push", a, "rem", "--as", "side", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "side" / "manifests").is_dir() and not (tmp_path / "rem" / "side").exists()


def test_a_file_where_the_manifests_folder_goes_is_named_not_a_lost_race(tmp_path: Path) -> None:
    a, r = tmp_path / "a.capsule", tmp_path / "r"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("x")
    r.mkdir()
    (r / "manifests").write_text("not a folder")
    p = cli("push", a, r.as_uri(), "--json", cwd=tmp_path)
    assert p.returncode == 1 and "remote moved" not in p.stderr, p.stderr
    assert "cannot create the folder manifests: a file of that name is in the way" in p.stderr
    assert p.stdout == "" or json.loads(p.stdout) is not None
    assert os.listdir(r / "segments")  # the segment went first; nothing names it
