"""Kill -9 during ``capsule compact`` in place (spec 15.1): the old file or the new one.

A subprocess compacts a copy of a parent whose writes are slowed down (so a kill lands
anywhere: the plan, the copied commits, the final INDEX and snapshots, the fsync, the
rename). After each kill the path holds either the parent's exact bytes or a compacted
file that verifies and verifies against the parent; a second compaction then succeeds.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import capsule

pytestmark = pytest.mark.slow


def _parent(path: Path) -> None:
    with capsule.create(path) as cap:
        ids = []
        for c in range(60):
            with cap.commit() as tx:
                ids += [tx.remember(f"fact {c}-{i} about topic {i % 7}") for i in range(20)]
        cap.run_once("effect", lambda: "done")
        with cap.commit() as tx:
            for rid in ids[:600]:
                tx.forget(rid)
        with cap.commit() as tx:
            tx.redact(ids[700], reason="secret")


SCRIPT = textwrap.dedent("""
    import sys, time
    import capsule
    import capsule.format.file as f
    real = f._pwrite

    def slow(fd, data, off):
        time.sleep(0.004)
        return real(fd, data, off)

    f._pwrite = slow
    print("READY", flush=True)
    capsule.compact(sys.argv[1], keep=sys.argv[2])
    print("DONE", flush=True)
""")


def test_kill_during_compaction_leaves_old_or_new(tmp_path: Path) -> None:
    orig = tmp_path / "orig.capsule"
    _parent(orig)
    old = orig.read_bytes()
    script = tmp_path / "compact.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    path = work / "agent.capsule"
    rng = random.Random(20261204)
    seen = {"old": 0, "new": 0}
    for round_ in range(16):
        shutil.copyfile(orig, path)
        policy = ("history", "live")[round_ % 2]
        proc = subprocess.Popen([sys.executable, str(script), str(path), policy], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.0, 0.9))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        data = path.read_bytes()
        if data == old:
            seen["old"] += 1
        else:
            seen["new"] += 1
            v = capsule.verify(path, parent=orig)
            assert v.ok, (round_, v.first_error)
            assert v.lineage["policy"] == policy
        assert capsule.verify(path).ok
        capsule.compact(path, keep=policy)  # the next compaction works either way
        assert capsule.verify(path).ok
        assert [x.name for x in work.iterdir()] == ["agent.capsule"]  # and removed what a kill left behind
    assert seen["old"] and seen["new"], seen
