"""A bug inside capsule still ends the CLI with one line and exit 70, not a traceback."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import capsule

BOOM = ("import sys, capsule\n"
        "def boom(*a, **k):\n"
        "    raise AttributeError('planted bug\\nsecond line')\n"
        "capsule.verify = boom\n"
        "sys.argv = ['capsule', 'verify', sys.argv[1]]\n"
        "from capsule_cli.main import main\n"
        "main()\n")


def _run(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BOOM, str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_internal_error_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    r = _run(p)
    assert r.returncode == 70
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("capsule: internal error: AttributeError: planted bug second line")
    assert "CAPSULE_DEBUG=1" in lines[0]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    capsule.create(p).close()
    r = _run(p, CAPSULE_DEBUG="1")
    assert r.returncode != 0 and "Traceback" in r.stderr and "planted bug" in r.stderr


def test_closed_standard_streams_are_no_internal_error(tmp_path: Path) -> None:
    """`capsule ... >&-` (fd 1 closed): Python leaves sys.stdout None; the CLI put /dev/null
    there, before the capsule was opened, so the capsule never becomes fd 1 and no command
    dies with an internal error. Output to a closed stdout is an error, as for `echo hi >&-`:
    each of these commands prints, so each says it cannot write its output and exits 1 (the
    work done stands, and the error says so: the put's record is in); a closed stderr or stdin
    changes nothing."""
    p = tmp_path / "a.capsule"
    exe = [sys.executable, "-c", "import sys; from capsule_cli.main import main; sys.argv[0] = 'capsule'; main()"]
    for redir in (">&-", "2>&-", "<&-", ">&- 2>&-"):
        for args in (["init", str(p)], ["put", str(p), "--text", "hello"], ["state", str(p)],
                     ["search", str(p), "hello"], ["verify", str(p)], ["--version"]):
            if args[0] == "init" and p.exists():
                continue
            cmd = " ".join(shlex.quote(a) for a in [*exe, *args]) + " " + redir
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
            if redir.startswith(">&-"):
                assert r.returncode == 1, (redir, args, r.stderr)
                made = " (the change was made: " if args[0] in ("init", "put") else "\n"
                assert r.stderr == "" if "2>&-" in redir else r.stderr.startswith(
                    "capsule: error: cannot write output: standard output is closed" + made), r.stderr
            else:
                assert r.returncode == 0, (redir, args, r.stderr)
            assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    rep = capsule.verify(p)
    assert rep.ok and rep.records == 4
