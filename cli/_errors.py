"""The one place errors become exit codes and one-line messages.

Exit codes: 0 ok; 1 the capsule or the input data is bad; 2 the command was
used wrongly (missing file, bad option, capsule locked); 130 interrupted.
Errors are one line on stderr; tracebacks are never shown.

Commands check their own option combinations with :func:`fail`, run the library
call inside :func:`call`, and ``main`` runs the whole app inside :func:`run_app`
(which also catches failures to write the output itself).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

import capsule
from capsule import CapsuleError, DataError, UsageError

from ._render import err

T = TypeVar("T")

EXIT_DATA = 1  # the capsule or the input data is bad (the caller is not to blame)
EXIT_USAGE = 2  # the command was used wrongly
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> NoReturn:
    err.print(f"capsule: error: {message}", markup=False)
    raise typer.Exit(code)


def call(fn: Callable[[], T]) -> T:
    """Run the library part of a command; library errors become exit codes and one-line messages."""
    try:
        return fn()
    except DataError as e:
        fail(str(e), EXIT_DATA)
    except capsule.WriterPoisoned as e:
        fail(str(e), EXIT_DATA)  # the disk or file system failed: not a usage mistake
    except UsageError as e:
        fail(str(e), EXIT_USAGE)
    except CapsuleError as e:
        fail(str(e), EXIT_DATA)
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), EXIT_USAGE)


def run_app(app: typer.Typer) -> None:
    """Run the app; Ctrl-C and an unwritable stdout end it with one line, not a traceback."""
    try:
        app(standalone_mode=True)
        sys.stdout.flush()
    except KeyboardInterrupt:
        err.print("capsule: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        try:
            sys.stdout.flush()
        except OSError as oe:
            sys.stderr.write(f"capsule: error: cannot write output: {oe.strerror or oe}\n")
            sys.exit(EXIT_DATA)
        raise e from None
    except OSError as e:  # e.g. stdout is /dev/full or a closed pipe
        sys.stderr.write(f"capsule: error: cannot write output: {e.strerror or e}\n")
        sys.exit(EXIT_DATA)
