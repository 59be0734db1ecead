"""Injectable clocks (design 7). Time enters the state only through here."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from .errors import UsageError

Clock = Callable[[], int]  # returns int nanoseconds since the Unix epoch, UTC


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) as whole seconds, or None."""
    v = os.environ.get("SOURCE_DATE_EPOCH")
    if v is None or v == "":
        return None
    try:
        n = int(v)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, not {v!r}") from None
    if not 0 <= n <= (1 << 63) // 1_000_000_000 - 1:
        raise UsageError("SOURCE_DATE_EPOCH must be between 0 and 9223372035 seconds")
    return n


def default_clock() -> Clock:
    """Wall clock, or the fixed SOURCE_DATE_EPOCH in reproducible mode."""
    epoch = source_date_epoch()
    if epoch is not None:
        fixed = epoch * 1_000_000_000
        return lambda: fixed
    return time.time_ns


def read_clock(clock: Clock) -> int:
    """One reading of ``clock``, checked: an int of nanoseconds in 0..2^63-1 (a COMMIT's time,
    6.1, and every record's, 7). A writer reads the clock through this before it writes, so a
    clock that returns seconds as a float (``time.time``), a negative or a huge value is a
    usage error, never a commit its reader refuses."""
    t = clock()
    if type(t) is not int or not 0 <= t < 1 << 63:
        hint = " (time.time gives seconds as a float: use time.time_ns)" if isinstance(t, float) else ""
        raise UsageError(f"the clock returned {t!r}: a time is an int of nanoseconds since the epoch, "
                         f"0..2^63-1{hint}")
    return t


_AGO = re.compile(r"(\d{1,12}) ?(s|m|h|d|w) ago", re.ASCII)
_UNIT = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86_400 * 10**9, "w": 7 * 86_400 * 10**9}


def ago(text: str, now: int) -> int | None:
    """A time given relative to ``now``: ``now``, ``yesterday`` (24 hours before) or
    ``N s|m|h|d|w ago`` (any case, spaces around ignored); None for any other text. A time
    before 1970 is a UsageError."""
    low = text.strip().lower()
    if low == "now":
        back = 0
    elif low == "yesterday":
        back = _UNIT["d"]
    elif m := _AGO.fullmatch(low):
        back = int(m[1]) * _UNIT[m[2]]
    else:
        return None
    if now - back < 0:
        raise UsageError(f"{text.strip()!r} is before 1970-01-01")
    return now - back


def iso(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds trimmed to what is non-zero."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"
