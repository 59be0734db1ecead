"""The writer's lock-info file is replaced, never written through (audit F19)."""

from __future__ import annotations

import os
from pathlib import Path

import capsule


def test_f19_a_symlink_at_the_lock_path_is_not_followed(tmp_path: Path) -> None:
    p = tmp_path / "x.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("a")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / "x.capsule.lock"
    lock.symlink_to(victim)
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:
            tx.remember("b")
        assert not lock.is_symlink() and lock.read_text().split()[0] == str(os.getpid())
    assert victim.read_text() == "precious\n"
    assert not lock.exists()  # close removes the lock-info file it made


def test_a_lock_info_symlink_to_a_fifo_does_not_hang_the_locked_error(tmp_path: Path) -> None:
    p = tmp_path / "x.capsule"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with capsule.create(p) as cap:
        lock = tmp_path / "x.capsule.lock"
        lock.unlink()
        lock.symlink_to(fifo)
        try:
            capsule.open(p, "a")
        except capsule.Locked as e:
            assert "another process" in str(e)
        else:
            raise AssertionError("a second writer must be refused")
        cap.close()
