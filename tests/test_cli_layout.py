"""The CLI's shape (style.md rules 3, 7, 8, 9): one small module per command
group, exit codes named in one place, ``capsule_cli.main`` the entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import capsule_cli.main as cli_main
import typer

CLI = Path(__file__).resolve().parents[1] / "cli"
MAX_LINES = 300  # style.md rule 7: aim for 150-300 lines, split by responsibility before 600

COMMANDS = ["init", "put", "get", "list", "open", "log", "state", "keygen", "rotate-keys", "rekey", "approve", "checkpoint",
            "checkpoints", "rollback", "fork", "compact", "merge", "forget", "redact", "supersede", "promote", "demote",
            "tasks", "actions", "verify", "search", "pack", "index",
            "beliefs", "why", "diff", "timeline", "audit", "report", "push", "pull",
            "export", "import-af", "export-af", "serve",
            "records"]  # records: list's hidden alias


def test_main_exposes_app_and_main() -> None:
    assert isinstance(cli_main.app, typer.Typer)
    assert callable(cli_main.main)


def test_cli_is_flat_and_every_module_is_small() -> None:
    # the package list in pyproject.toml silently drops subpackages (rule 9)
    assert not [p for p in CLI.iterdir() if p.is_dir() and p.name != "__pycache__"]
    for f in CLI.glob("*.py"):
        n = len(f.read_text(encoding="utf-8").splitlines())
        assert n <= MAX_LINES, f"cli/{f.name} has {n} lines; split it by command group"


def test_commands_registered_in_help_order_with_examples() -> None:
    names = [c.name for c in cli_main.app.registered_commands]
    assert names == COMMANDS
    for c in cli_main.app.registered_commands:
        assert c.callback is not None
        assert "Example" in (c.callback.__doc__ or ""), f"`capsule {c.name}` has no example in its help"


def test_exit_codes_are_named_only_in_errors_module() -> None:
    literal_exit = re.compile(r"fail\([^\n]*,\s*\d+\)|Exit\([1-9]\d*\)|sys\.exit\(")
    for f in CLI.glob("*.py"):
        if f.name == "_errors.py":
            continue
        hits = literal_exit.findall(f.read_text(encoding="utf-8"))
        assert not hits, f"cli/{f.name} picks exit codes itself: {hits}"


def test_version_does_not_import_heavy_cli_dependencies() -> None:
    probe = ("import sys\n"
             "sys.argv = ['capsule', '--version']\n"
             "from capsule_cli.main import main\n"
             "try:\n"
             "    main()\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('rich.progress' in sys.modules, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("capsule ")
    assert r.stderr.strip() == "False"
