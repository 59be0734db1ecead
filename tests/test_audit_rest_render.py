"""C1 controls and bidi overrides never reach the terminal raw (audit item 4a, F23).

JSON escapes only C0 controls: U+0085 (NEL), U+009B (a one-byte CSI on terminals
that honour C1), U+202E (right-to-left override) and their kind pass through
``json.dumps(..., ensure_ascii=False)`` as they are. Every ``--json`` document now
writes them as ``\\uXXXX`` (the same string to a JSON reader); tables and messages
escape them as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule

HOSTILE = ["\u0085", "\u009b31m", "\u202e", "\u202a", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069",
           "\u200e", "\u200f", "\u061c", "\u2028", "\u2029"]
TEXT = "evil " + " ".join(HOSTILE) + " end"
RAW = {c for h in HOSTILE for c in h if ord(c) >= 0x80}


@pytest.fixture()
def hostile(tmp_path: Path) -> tuple[Path, str]:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        rid = tx.remember(TEXT, tags=["t\u202et"], meta={"k\u0085": "v\u2066"})
        tx.constrain(TEXT, scope="s\u009b")
    return p, rid


def run(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.mark.parametrize("cmd", [["get", "{rid}", "--json"], ["state", "{p}", "--json"],
                                 ["search", "{p}", "evil", "--mode", "lexical", "--json"],
                                 ["list", "{p}", "--json"]])
def test_json_output_escapes_c1_and_bidi_controls(hostile: tuple[Path, str], cmd: list[str]) -> None:
    p, rid = hostile
    args = [a.format(p=p, rid=rid) for a in cmd]
    if cmd[0] == "get":
        args.insert(1, str(p))
    out = run(*args)
    assert not RAW & set(out), sorted(f"U+{ord(c):04X}" for c in RAW & set(out))
    assert "\\u202e" in out and "\\u0085" in out
    assert TEXT in json.dumps(json.loads(out), ensure_ascii=False)  # the same text to a JSON reader


@pytest.mark.parametrize("cmd", [["get", "{p}", "{rid}"], ["state", "{p}"], ["list", "{p}"]])
def test_tables_and_text_escape_them_too(hostile: tuple[Path, str], cmd: list[str]) -> None:
    p, rid = hostile
    out = run(*[a.format(p=p, rid=rid) for a in cmd])
    assert not RAW & set(out), sorted(f"U+{ord(c):04X}" for c in RAW & set(out))
