"""The `capsule` command in a fresh process, as a user runs it: one runner for the review tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CAPSULE_BIN = Path(sys.executable).with_name("capsule")


def capsule_cli(*args: str | Path, ok: bool = True, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``capsule ARGS`` (stdin empty, a wide console, no colour); a traceback always fails the
    test, and with ``ok`` so does a non-zero exit."""
    full = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    full["COLUMNS"] = "200"
    full.update(env or {})
    p = subprocess.run([str(CAPSULE_BIN), *map(str, args)], input="", capture_output=True, text=True, env=full,
                       timeout=timeout, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    if ok:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p
