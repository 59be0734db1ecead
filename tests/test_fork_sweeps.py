"""A fork removes the temporary files killed forks left, whatever name they were forking to.

A fork writes ``.OUT.fork-RANDOM`` and links it to OUT when whole; a kill leaves it (megabytes of
the parent's records) with its lock file. Only a later fork to the same name, a minute on, swept
it; five kills left five pairs. A fork now sweeps every such file of its folder that nobody holds
and nobody touched for a minute (a live fork holds its flock).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import capsule


def test_a_fork_sweeps_dead_forks_of_any_name(tmp_path: Path) -> None:
    parent = tmp_path / "p.capsule"
    with capsule.create(parent) as cap, cap.commit() as tx:
        tx.remember("kept")
    old = time.time() - 300
    dead = []
    for name in ("a.capsule", "b.capsule"):
        t = tmp_path / f".{name}.fork-0123456789ab"
        t.write_bytes(b"x" * 1000)
        lock = t.with_name(t.name + ".lock")
        lock.write_bytes(b"")
        for f in (t, lock):
            os.utime(f, (old, old))
        dead += [t, lock]
    young = tmp_path / ".c.capsule.fork-ba9876543210"  # a fork starting now, not locked yet: left
    young.write_bytes(b"y")
    mine = tmp_path / ".notes.fork-draft"  # not a fork's name: left
    mine.write_bytes(b"z")
    os.utime(mine, (old, old))
    with capsule.fork(parent, tmp_path / "other.capsule"):
        pass
    assert not any(p.exists() for p in dead)
    assert young.exists() and mine.exists()
