"""Help text a person reads: plain metavars, no Python types.

Typer 0.2x prints a Python type after every parameter (``<bool>`` after a flag,
``<list[str]>``, ``<int range>``, ``<path>`` after an argument's name) and puts a
required argument in braces on the usage line (``capsule put [OPTIONS] {path}``).
Importing this module changes how typer's parameter classes name themselves:

- a flag shows no value at all;
- an option's value is its ``metavar`` or an upper-case word for its type
  (TEXT, INTEGER, NUMBER, PATH), once, whether or not it repeats;
- an argument shows its metavar (FILE, QUERY, ID ...) and nothing else, and the
  usage line reads ``capsule put [OPTIONS] FILE``.

:func:`literal` keeps square brackets in help text from being read as markup.

Typer has no hook for this, so it replaces three methods of its parameter
classes, only where they exist (older typer prints TEXT and PATH itself);
``tests/test_cli_first_hour.py`` renders every command's help and fails if a
``<type>`` or ``{name}`` comes back after an upgrade.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import DEFAULT_MARKUP_MODE, TyperArgument, TyperOption

_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "bool": "BOOLEAN"}
_LABEL = re.compile(r"^<(?:list\[)?([^\]>]+?)(?: range)?\]?>(?:\.\.\.)?$")


def _word(typed: str | None) -> str | None:
    """``<list[str]>`` -> TEXT, ``<int range>`` -> INTEGER, ``<path>`` -> PATH."""
    if typed is None:
        return None
    m = _LABEL.match(typed)
    if m is None:
        return typed
    name = m.group(1).strip()
    return _WORDS.get(name.lower(), name.upper())


def literal(text: str) -> str:
    """Help text shown as written: typer reads help as rich markup, where
    ``agent-capsule[minilm]`` would lose its ``[minilm]``."""
    return text.replace("[", "\\[") if DEFAULT_MARKUP_MODE == "rich" else text


def _install() -> None:
    opt_type = getattr(TyperOption, "display_type_rich", None)
    if opt_type is not None:
        def option_type(self: Any, ctx: Any) -> str | None:
            if self.is_flag or self.count:
                return None
            return self.metavar if self.metavar is not None else _word(opt_type(self, ctx))

        TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    if hasattr(TyperArgument, "display_type_rich"):
        TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
    if hasattr(TyperArgument, "_usage_display_name"):
        def usage_name(self: Any) -> str:
            name = self.metavar or str(self.name).upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        TyperArgument._usage_display_name = usage_name


_install()
