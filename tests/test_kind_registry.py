"""Every entry point decodes built-in kinds as their classes, whatever was imported first.

Lazy imports once let `capsule verify` (which opens no handle) decode a `vindex`
record as a GenericRecord and crash on a packed file. Each case runs in a fresh
interpreter, so an import made by another test cannot hide the hole.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import capsule


def _build(path: Path) -> None:
    doc = path.with_suffix(".md")
    doc.write_text("# Title\n\nhello world\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['capsule', 'pack', sys.argv[1], '-o', sys.argv[2]]; "
                    "from capsule_cli.main import main; main()", str(doc), str(path)], check=True, timeout=120)
    with capsule.open(path, "a") as cap:
        with cap.commit() as tx:
            for i in range(4):
                tx.remember(f"fact {i}", embedding=np.full(384, i + 1, np.float32))
            tx.note("a note")
        cap.build_index()


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_library_verify_in_a_fresh_process(tmp_path: Path) -> None:
    p = tmp_path / "v.capsule"
    _build(p)
    r = _fresh(f"import capsule; rep = capsule.verify({str(p)!r}); print(rep.ok)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


def test_cli_verify_in_a_fresh_process(tmp_path: Path) -> None:
    p = tmp_path / "v.capsule"
    _build(p)
    r = _fresh(f"import sys; sys.argv = ['capsule', 'verify', {str(p)!r}]; "
               "from capsule_cli.main import main; main()")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith("ok:")
