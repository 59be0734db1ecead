"""The one place errors become exit codes and one-line messages.

Exit codes: 0 ok; 1 the capsule or the input data is bad; 2 the command was
used wrongly (missing file, bad option, capsule locked); 130 interrupted
(SIGINT), 143 terminated (SIGTERM). Errors are one line on stderr; tracebacks
are never shown.

SIGINT and SIGTERM both become :class:`Interrupted`, raised wherever the program
was, so they take the same way out as any failure: a transaction discards its
batch, ``pack`` deletes the capsule it was making, the writer lock is released;
then ``capsule: interrupted`` and 128 + the signal number. (Not KeyboardInterrupt:
Typer swallows that into a silent exit 130.)

Commands check their own option combinations with :func:`fail`, run the library
call inside :func:`call`, and ``main`` runs the whole app inside :func:`run_app`
(which also catches failures to write the output itself).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn, TypeVar

import typer

import capsule
from capsule import CapsuleError, DataError, UsageError

from ._render import err

T = TypeVar("T")

EXIT_DATA = 1  # the capsule or the input data is bad (the caller is not to blame)
EXIT_USAGE = 2  # the command was used wrongly
EXIT_INTERRUPTED = 128  # + the signal number: 130 for SIGINT, 143 for SIGTERM


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, so ``except Exception`` lets it by)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # The way out is a cleanup (a pack deleting its file): a second signal must not cut it short.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


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
    """Run the app; a signal, exhausted memory and an unwritable stdout end it with
    one line, not a traceback."""
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:  # nohup and `cmd &` ignore them on purpose
            signal.signal(s, _on_signal)
    try:
        app(standalone_mode=True)
        sys.stdout.flush()
    except Interrupted as e:
        err.print("capsule: interrupted")
        sys.exit(EXIT_INTERRUPTED + e.signum)
    except MemoryError:
        err.print("capsule: error: out of memory")
        sys.exit(EXIT_DATA)
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
