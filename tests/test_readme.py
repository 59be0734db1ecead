"""README.md is a walk that works: every shell and Python block runs, in order, as a reader would.

The blocks run as one bash script (``set -euo pipefail``: every command must exit 0), so shell
variables and the working directory carry from one block to the next as they do for a reader
who pastes them into one terminal; a ```python block runs as ``python - <<EOF`` at its place in
the walk. The script starts in a stand-in for the repository root (``.venv`` and ``examples``
linked from the real one), so a block that wrote before ``cd``-ing away would not touch the
checkout. A block that cannot run here is marked ``<!-- readme-test: skip ... -->`` on the line
before it; keep that list minimal (today: ``make demo`` / ``make test`` themselves).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\b")
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL = {"sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # README line of the opening fence
    skipped: bool


def blocks(text: str) -> list[Block]:
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        out.append(Block(m.group(1).lower(), m.group(2), len(before) + 1,
                         bool(before) and bool(SKIP.match(before[-1].strip()))))
    return out


def script(found: list[Block]) -> str:
    """The walk as one bash script; each block first says where it is, for the error message."""
    parts = ["set -euo pipefail"]
    for b in found:
        if b.skipped or b.lang not in SHELL | {"python"}:
            continue
        parts.append(f"trap 'echo \"README.md block at line {b.line} failed: $BASH_COMMAND\" >&2' ERR")
        parts.append(f"echo '## README.md:{b.line} ({b.lang})'")
        if b.lang == "python":
            assert "__README_PY__" not in b.body
            parts.append(f"python - <<'__README_PY__'\n{b.body}__README_PY__")
        else:
            parts.append(b.body)
    parts.append("echo '## README walk: done'")
    return "\n".join(parts) + "\n"


def test_the_readme_blocks_are_found_and_few_are_skipped() -> None:
    found = blocks(README.read_text())
    run = [b for b in found if not b.skipped and b.lang in SHELL | {"python"}]
    skipped = [b for b in found if b.skipped]
    assert len(skipped) <= 1 and all("make demo" in b.body for b in skipped), \
        "only `make demo` / `make test` may be skipped: make a new block runnable instead"
    assert {b.lang for b in run} >= {"sh", "python"} and len(run) >= 6
    assert not [b.line for b in found if b.lang not in SHELL | {"python"}], "blocks must say sh or python"
    assert not [b.line for b in run if '"<id>"' in b.body or "<ID>" in b.body], "no placeholders: show how to get an id"


def test_the_readme_walk_runs_top_to_bottom(tmp_path: Path) -> None:
    root = tmp_path / "clone"  # the repository root as the walk sees it
    root.mkdir()
    for name in (".venv", "examples"):
        (root / name).symlink_to(ROOT / name)
    scratch = tmp_path / "tmp"  # where the walk's `mktemp -d` lands
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "PYTHONPATH")}
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""), TMPDIR=str(scratch),
               COLUMNS="120")
    found = blocks(README.read_text())
    proc = subprocess.run(["bash", "-c", script(found)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    tail = f"\n--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, tail
    ran = re.findall(r"^## README\.md:(\d+) ", proc.stdout, re.M)
    assert len(ran) == sum(1 for b in found if not b.skipped), tail
    assert proc.stdout.rstrip().endswith("## README walk: done"), tail
    assert not [p.name for p in root.iterdir() if p.name not in (".venv", "examples")], "the walk wrote in the root"
