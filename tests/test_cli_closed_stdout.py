"""Output to a standard output the shell closed (``>&-``) is an error, never dropped with exit 0.

``capsule export F -o - >&-`` said "wrote -: 100004 rows" and exited 0 with every row lost:
the CLI had put a stream on /dev/null in place of the closed fd 1 (so that no capsule opened
later becomes fd 1) and wrote into it. /dev/null still holds fd 1, and every write to
stdout now fails as ``echo hi >&-`` does: ``cannot write output: standard output is closed``,
exit 1. What the command did before it printed stands, as with a full disk.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import capsule

from .clirun import CAPSULE_BIN


def _closed(*args: str) -> subprocess.CompletedProcess[str]:
    """The command with fd 1 closed, as ``capsule ARGS >&-`` runs it."""
    return subprocess.run([CAPSULE_BIN, *args], stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))


def test_export_to_a_closed_stdout_fails_and_says_so(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(50):
            tx.remember(f"memory {i}")
    before = p.read_bytes()
    r = _closed("export", str(p), "-o", "-")
    assert r.returncode == 1, r.stderr
    assert r.stderr == "capsule: error: cannot write output: standard output is closed\n"
    assert p.read_bytes() == before  # a read-only command: the capsule untouched
    for args in (["tasks", str(p), "--json"], ["list", str(p), "--json"], ["state", str(p)]):
        r = _closed(*args)
        assert (r.returncode, r.stderr) == (1, "capsule: error: cannot write output: standard output is closed\n")


def test_a_put_into_a_closed_stdout_keeps_its_record_and_says_the_id_was_not_printed(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    r = _closed("put", str(p), "--text", "kept")
    assert r.returncode == 1 and "cannot write output" in r.stderr
    assert f"(the change was made: {p}: commit 2 (seq " in r.stderr and "was written and stands)" in r.stderr
    with capsule.open(p) as cap:
        assert [m.text for m in cap.records()] == ["kept"]
    assert capsule.verify(p).ok


def test_stdout_on_dev_null_is_no_error(tmp_path: Path) -> None:
    """The control: output thrown away on purpose is written, and the command succeeds."""
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    r = subprocess.run([CAPSULE_BIN, "export", str(p), "-o", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_serve_refuses_a_closed_stdout_before_any_write(tmp_path: Path) -> None:
    """`capsule serve F --mcp >&-` committed the client's writes and dropped every answer, exit 0."""
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    before = p.read_bytes()
    r = subprocess.run([CAPSULE_BIN, "serve", str(p), "--mcp"], input='{"jsonrpc": "2.0"}\n', stderr=subprocess.PIPE,
                       text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert (r.returncode, r.stderr) == (1, "capsule: error: cannot serve: standard output is closed, so no answer "
                                           "could reach the client\n")
    assert p.read_bytes() == before
