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


def test_the_library_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    """F21 at the library level: open, open for writing and verify never block on a FIFO."""
    import signal

    import pytest

    fifo = tmp_path / "pipe.capsule"
    os.mkfifo(fifo)

    def alarm(*_: object) -> None:
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    try:
        for call in (lambda: capsule.open(fifo), lambda: capsule.open(fifo, "a"), lambda: capsule.verify(fifo)):
            with pytest.raises(capsule.UsageError, match="not a regular file"):
                call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
