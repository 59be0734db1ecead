"""Standard streams a shell closed (``capsule ... >&-``): claimed before any file is opened."""

from __future__ import annotations

import os
import sys


def claim_std_fds(fds: tuple[int, ...] = (0, 1, 2)) -> frozenset[int]:
    """Put ``/dev/null`` on each of ``fds`` (0, 1, 2) that is closed, before any capsule is
    opened: else the capsule would get that fd, and be read as input or have output written
    into it. Where Python left ``sys.stdin``/``stdout``/``stderr`` None for a closed fd, a
    stream on ``/dev/null`` stands in. Returns the fds that were closed (the caller decides
    whether output to them is an error: the command line's is, cli/_render.ClosedStdout)."""
    names = {0: "stdin", 1: "stdout", 2: "stderr"}
    closed = set()
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # the lowest free fd is this one, unless a lower one was closed too
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, names[fd]) is None:
            setattr(sys, names[fd], open(fd, "r" if fd == 0 else "w", encoding="utf-8", closefd=False))  # noqa: SIM115
    return frozenset(closed)


__all__ = ["claim_std_fds"]
