"""Option values without pydantic: start-up for commands agents call in loops.

Typer (0.2x) coerces every parameter through a pydantic ``TypeAdapter`` that it
builds the first time the parameter is processed, given or not; importing
pydantic and building the adapters costs 40-100 ms, a third of a small
``capsule open`` and most of ``capsule --version``. Importing this module makes
typer build the adapter only when a value actually needs it, and coerce the
plain values this CLI takes itself, the way typer's own code does:

- a ``str`` is the command-line string;
- a ``Path`` is ``Path(value)``, then typer's own path checks (``exists``,
  ``dir_okay`` ...) run on it as before;
- an ``int`` written as plain decimal digits is that number, when it is within
  the option's ``min``/``max``;
- a list of these, element by element.

Anything else (an int out of range or in another spelling, choices, a custom
parser) goes to typer's adapter unchanged, only later, and so gets typer's own
message. A missing optional value never builds
one. If typer's internals move, nothing is patched and typer works as it always
did, only slower; ``tests/test_startup.py`` then fails on pydantic being loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

try:
    from typer import _coercion, _param_types
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover - another typer: leave it alone
    _TyperParameter = None


_DIGITS = re.compile(r"-?[0-9]{1,18}")


def _plain(annotation: Any, info: Any) -> type | None:
    """``str``, ``Path`` or ``int`` when typer would coerce this leaf without options we skip."""
    if info.parser is not None or getattr(info, "click_type", None) is not None:
        return None
    if annotation is str or annotation is int and not getattr(info, "clamp", False):
        return annotation  # type: ignore[no-any-return]
    if annotation is Path and info.path_type is None:
        return Path
    return None


class _Outside(Exception):
    """A number outside the option's range: typer's adapter reports it."""


def _fits(value: Any, kind: type) -> bool:
    if kind is int:  # a default is an int already; a given value, text of plain digits
        return type(value) is int or isinstance(value, str) and _DIGITS.fullmatch(value) is not None
    return isinstance(value, kind | str)


def _install() -> None:
    if _TyperParameter is None or not hasattr(_TyperParameter, "get_runtime_param"):
        return
    base = getattr(_coercion, "RuntimeParam", None)
    real_build = getattr(_coercion, "build_runtime_param", None)
    check_path = getattr(_param_types, "coerce_cli_path", None)
    if base is None or real_build is None or check_path is None:
        return

    class Deferred(base):  # type: ignore[misc, valid-type]
        """Coerces plain values itself; builds typer's adapter for anything else."""

        def __init__(self, descriptor: Any) -> None:
            super().__init__(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation)
            object.__setattr__(self, "_descriptor", descriptor)
            object.__setattr__(self, "_real", None)

        def _leaf(self, value: Any, kind: type, param: Any, ctx: Any) -> Any:
            if kind is str:
                return value
            if kind is int:
                n = value if type(value) is int else int(value)
                lo, hi = self.parameter_info.min, self.parameter_info.max
                if (lo is not None and n < lo) or (hi is not None and n > hi):
                    raise _Outside
                return n
            path = value if isinstance(value, Path) else Path(value)
            return check_path(path, self.parameter_info, path_type=Path, param=param, ctx=ctx)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            ann, info = self.annotation, self.parameter_info
            leaf = _plain(ann, info)
            if get_origin(ann) is list and len(get_args(ann)) == 1:
                item = _plain(get_args(ann)[0], info)
                items = value if isinstance(value, list | tuple) else [value]
                if item is not None and all(_fits(v, item) for v in items):
                    try:
                        return [self._leaf(v, item, param, ctx) for v in items]
                    except _Outside:
                        pass
            elif leaf is not None and _fits(value, leaf):
                try:
                    return self._leaf(value, leaf, param, ctx)
                except _Outside:
                    pass  # typer's adapter says what is wrong, in its words
            real = self.__dict__["_real"]
            if real is None:
                real = real_build(self.__dict__["_descriptor"])
                object.__setattr__(self, "_real", real)
            return real._coerce_value(value, param, ctx)

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            try:
                self._runtime_param = Deferred(self.type_descriptor)
            except (AttributeError, TypeError):  # typer's RuntimeParam changed shape
                self._runtime_param = real_build(self.type_descriptor)
        return self._runtime_param

    _TyperParameter.get_runtime_param = get_runtime_param


_install()
