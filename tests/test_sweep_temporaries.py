"""A merge or compaction killed before its rename leaves its temporary file and lock file
beside the output. The next merge or compaction to that name removes a dead writer's (not
flocked, untouched for a while) and never a live one's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import capsule
from capsule.format.file import STALE_AFTER, sweep_temporaries

_HOLD = """
import os, signal, sys, time
from pathlib import Path
from capsule.format.file import WriteHandle
h = WriteHandle(Path(sys.argv[1]), create=True)
os.write(h.fd, b"half a capsule")
print("ready", flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""


def _writer(path: Path, how: str) -> subprocess.Popen[str]:
    """A process holding a writer's temporary file at ``path``: killed by -9 ("die") or alive."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), how], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    if how == "die":
        assert p.wait(10) == -signal.SIGKILL
        p.stdout.close()
    return p


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))
    lock = path.with_name(path.name + ".lock")
    if lock.exists():
        os.utime(lock, (t, t))


def _two(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("shared")
    capsule.fork(a, b).close()
    for p, text in ((a, "only in a"), (b, "only in b")):
        with capsule.open(p, "a") as cap, cap.commit() as tx:
            tx.remember(text)
    return a, b


def test_a_killed_merge_leaves_nothing_after_the_next_merge(tmp_path: Path) -> None:
    a, b = _two(tmp_path)
    dead = tmp_path / ".m.capsule.merge-0123456789ab"
    live = tmp_path / ".m.capsule.merge-live00000000"
    young = tmp_path / ".m.capsule.merge-young0000000"
    _writer(dead, "die")
    assert dead.exists() and dead.with_name(dead.name + ".lock").exists()
    holder = _writer(live, "live")
    try:
        young.write_bytes(b"just created, not locked yet")
        for p in (dead, live):
            _age(p, STALE_AFTER + 5)
        capsule.merge(a, b, tmp_path / "m.capsule")
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.capsule"))
        # the dead one and its lock file are gone; the live writer's and the young file stay
        assert left == sorted([live.name, live.name + ".lock", young.name]), left
        assert capsule.verify(tmp_path / "m.capsule").ok
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_compaction_sweeps_its_own_dead_temporaries(tmp_path: Path) -> None:
    a, _ = _two(tmp_path)
    dead = tmp_path / ".a.capsule.compact-0123456789ab"
    _writer(dead, "die")  # young: in place, the writer lock says no other compactor lives
    out_dead = tmp_path / ".o.capsule.compact-0123456789ab"
    _writer(out_dead, "die")
    _age(out_dead, STALE_AFTER + 5)
    capsule.compact(a)  # in place
    capsule.compact(a, tmp_path / "o.capsule")
    left = sorted(p.name for p in tmp_path.iterdir() if ".compact-" in p.name)
    assert left == [], left
    assert capsule.verify(a).ok and capsule.verify(tmp_path / "o.capsule").ok


def test_sweep_leaves_what_it_cannot_prove_dead(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    link = tmp_path / ".x.merge-link"
    link.symlink_to(tmp_path / "sub")  # not a regular file: never removed
    orphan = tmp_path / ".x.merge-gone.lock"  # a lock file whose temporary file is gone
    orphan.write_bytes(b"1\nhost")
    _age(orphan, STALE_AFTER + 5)
    fresh_orphan = tmp_path / ".x.merge-new.lock"
    fresh_orphan.write_bytes(b"2\nhost")
    assert sweep_temporaries(tmp_path, ".x.merge-*") == []
    assert link.is_symlink() and not orphan.exists() and fresh_orphan.exists()
