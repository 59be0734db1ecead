"""Fork a child while another thread holds a module lock (the tests of fork handlers).

A lock held across ``fork()`` stays held in the child, where no thread will release it;
the package gives each such child a fresh lock (``os.register_at_fork``). The helper makes
the fork land inside the critical section every time, and a child that would hang dies of
SIGALRM instead of hanging the suite."""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any


def fork_while_held(get_lock: Callable[[], Any], child: Callable[[], bool]) -> int:
    """Fork while a thread holds ``get_lock()``; the child runs ``child`` (True: as expected)
    within 3 s. The child's wait status. ``get_lock`` is called in each process, so a
    handler that replaced the module's lock is seen."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with get_lock():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert held.wait(5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
            pid = os.fork()
        if pid == 0:
            code = 4
            try:
                signal.alarm(3)
                code = 0 if child() else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join(5)
    return status
