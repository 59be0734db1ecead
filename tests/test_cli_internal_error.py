"""A bug inside capsule still ends the CLI with one line and exit 70, not a traceback."""

from __future__ import annotations

import os
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
