"""Injectable clocks (design 7). Time enters the state only through here."""

from __future__ import annotations

import os
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


def iso(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds trimmed to what is non-zero."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"
