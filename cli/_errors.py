"""The one place errors become exit codes and one-line messages.

Exit codes: 0 ok; 1 the capsule or the input data is bad; 2 the command was
used wrongly (missing file, bad option, capsule locked); 130 interrupted
(SIGINT), 143 terminated (SIGTERM), 129 hung up (SIGHUP). Errors are one line on stderr; tracebacks
are never shown.

SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh) become :class:`Interrupted`, raised wherever the program
was, so they take the same way out as any failure: a transaction discards its
batch, ``pack`` deletes the capsule it was making, the writer lock is released;
then ``capsule: interrupted`` and 128 + the signal number. (Not KeyboardInterrupt:
Typer swallows that into a silent exit 130.)

Commands check their own option combinations with :func:`fail`, run the library
call inside :func:`call`, and ``main`` runs the whole app inside :func:`run_app`
(which also catches failures to write the output itself, and prints typer's own
usage errors, a missing argument or ``-k 0``, in the same one-line form).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn, TypeVar

import typer

import capsule
from capsule import CapsuleError, DataError, UsageError
from capsule.core.stdio import claim_std_fds

from ._render import ClosedStdout, OutputError, err

T = TypeVar("T")

EXIT_DATA = 1  # the capsule or the input data is bad (the caller is not to blame)
#: the option that gives this command the capsule's passphrase (cli/_keys.py sets it per command)
CAPSULE_PASSPHRASE_OPTION = "--passphrase-env"
EXIT_INTERNAL = 70  # a bug in capsule itself (sysexits EX_SOFTWARE): one line, never a traceback
EXIT_USAGE = 2  # the command was used wrongly
EXIT_INTERRUPTED = 128  # + the signal number: 130 for SIGINT, 143 for SIGTERM


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, so ``except Exception`` lets it by)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # The way out is a cleanup (a pack deleting its file): a second signal must not cut it short.
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


class SigningKeyError(UsageError):
    """A usage error about a signing key file, whose passphrase option keeps its name."""


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
    except capsule.PolicyViolation as e:
        fail(str(e), EXIT_DATA)  # 7.3.1: refused by a rule, as `verify --policy` fails
    except UsageError as e:
        msg = str(e)
        if CAPSULE_PASSPHRASE_OPTION != "--passphrase-env" and not isinstance(e, SigningKeyError):
            # 10: the capsule's passphrase has another option on this command (a signing key's is not it)
            msg = msg.replace("--passphrase-env VAR", f"{CAPSULE_PASSPHRASE_OPTION} VAR")
        fail(msg, EXIT_USAGE)
    except CapsuleError as e:
        fail(str(e), EXIT_DATA)
    except (BrokenPipeError, OutputError):
        raise  # the reader of stdout went away (run_app ends quietly), or stdout failed (run_app says so)
    except OSError as e:
        # a full disk or a failing one is not a usage mistake (the README: exit 1); a missing
        # file, a permission, a folder where a file was meant are (exit 2)
        disk = e.errno in _DISK_ERRNOS or any(f"[errno {n}]" in str(e).lower() for n in _DISK_ERRNOS)
        fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), EXIT_DATA if disk else EXIT_USAGE)


_DISK_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EIO", "EFBIG") if hasattr(errno, n))

#: typer's usage errors (click's ClickException, which newer typer vendors privately)
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def run_app(app: typer.Typer) -> None:
    """Run the app; a signal, exhausted memory and an unwritable stdout end it with
    one line, not a traceback."""
    if 1 in claim_std_fds():  # before any capsule is opened: a closed fd 1 must not become the capsule's
        sys.stdout = ClosedStdout()  # type: ignore[assignment]  # and output to it is an error, not dropped
    stdout_was = _fd_identity(1)
    for s in _SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # nohup and `cmd &` ignore them on purpose
            signal.signal(s, _on_signal)
    try:
        # Not standalone: typer would print its own errors in a boxed panel; ours are one line.
        code = app(standalone_mode=False)
        sys.stdout.flush()
        if isinstance(code, int) and code:  # a typer.Exit(code) from a command or --help
            sys.exit(code)
    except _CLICK_ERROR as e:  # a missing argument, an unknown option, a value out of range
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `capsule`: the help, as typer shows it
            app(["--help"], standalone_mode=False)
            sys.exit(EXIT_USAGE)
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        msg = " ".join(e.format_message().split()).replace(" (Possible options: --help)", "")  # no suggestion
        err.print(f"capsule: error: {msg}{hint}", markup=False)
        sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    except typer.Abort:
        err.print("capsule: error: aborted")
        sys.exit(EXIT_DATA)
    except Interrupted as e:
        said = _written()
        err.print(f"capsule: interrupted{' after ' + said if said else ''}", markup=False)
        sys.exit(EXIT_INTERRUPTED + e.signum)
    except MemoryError:
        err.print("capsule: error: out of memory")
        sys.exit(EXIT_DATA)
    except BrokenPipeError:
        stdout_gone()
    except SystemExit as e:
        if e.code == 1 and (type(sys.stdout).__name__ == "PacifyFlushWrapper"
                            or _fd_identity(1) not in (stdout_was, None) and _fd_identity(1) == _devnull()):
            # typer turns a BrokenPipeError it meets first (a command writing straight to
            # sys.stdout.buffer, as `state --json` does) into exit 1, the "bad capsule" status,
            # marking it by wrapping stdout; rich (typer's help) exits 1 after putting /dev/null on
            # fd 1: the reader went away, as below
            stdout_gone()
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            stdout_gone()
        except OSError as oe:
            _output_failed(oe)
        raise e from None
    except OSError as e:  # e.g. stdout is /dev/full or a closed pipe
        _output_failed(e)
    except Exception as e:  # a bug of ours: still one line (the traceback on request)
        if os.environ.get("CAPSULE_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300]
        sys.stderr.write(f"capsule: internal error: {type(e).__name__}: {msg} "
                         "(a bug in capsule: rerun with CAPSULE_DEBUG=1 for the traceback and report it)\n")
        sys.exit(EXIT_INTERNAL)


def _written() -> str:
    """The commits this process made durable, as a retry must know them ("" when none): a
    command stopped after its commit stands, and running it again may add its records twice."""
    writer = sys.modules.get("capsule.format.writer")
    done = {f: c for f, c in getattr(writer, "WRITTEN", {}).items() if os.path.exists(f)}  # not a deleted temp
    return "; ".join(f"{f}: commit {c} (seq {q}) " + ("was written and stands" if sure else
                                                       "was being written and may stand (capsule log)")
                     for f, (c, q, sure) in done.items())


def _output_failed(e: OSError) -> NoReturn:
    """Standard output refused the output (a full disk, `>&-`): exit 1, saying whether the
    command's change was committed before it (then it stands: do not simply run it again)."""
    said = _written()
    sys.stderr.write(f"capsule: error: cannot write output: {e.strerror or e}"
                     + (f" (the change was made: {said})" if said else "") + "\n")
    sys.exit(EXIT_DATA)


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _devnull() -> tuple[int, int] | None:
    try:
        st = os.stat(os.devnull)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def stdout_gone() -> None:
    """The reader of stdout went away (`capsule export F -o - | head -1`): stop quietly, with
    the status of a program SIGPIPE ended (128 + 13), as `cat` or `git` would."""
    with contextlib.suppress(OSError):
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())  # the interpreter's own flush at exit must not fail again
    sys.exit(128 + signal.SIGPIPE)
