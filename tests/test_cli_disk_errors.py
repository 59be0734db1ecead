"""A full or failing disk is exit 1, as the README says, not 2 ("used wrongly") (two reviews' finding).

``export -o FILE``, ``report -o FILE`` and a pull into a new file on a full disk said
``No space left on device`` with exit 2; pyarrow's ``[errno 28]`` text too. A missing file or a
permission stays a usage error.
"""

from __future__ import annotations

import errno

import pytest
import typer
from capsule_cli._errors import call


def _code(exc: BaseException) -> int:
    def boom() -> None:
        raise exc

    with pytest.raises(typer.Exit) as e:
        call(boom)
    return e.value.exit_code


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError(errno.ENOSPC, "No space left on device", "out.jsonl"),
                                 OSError(errno.EIO, "Input/output error"),
                                 OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")])
def test_the_disk_failing_is_exit_1(exc: OSError, capsys: pytest.CaptureFixture[str]) -> None:
    assert _code(exc) == 1
    assert capsys.readouterr().err.startswith("capsule: error: ")


@pytest.mark.parametrize("exc", [FileNotFoundError(errno.ENOENT, "No such file or directory", "x"),
                                 PermissionError(errno.EACCES, "Permission denied", "x"),
                                 IsADirectoryError(errno.EISDIR, "Is a directory", "x")])
def test_the_callers_mistakes_stay_exit_2(exc: OSError) -> None:
    assert _code(exc) == 2
