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
