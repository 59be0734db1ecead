"""A deterministic clock for tests that write capsules: each reading one step (a second) later."""

from __future__ import annotations

T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


class Clock:
    """Reads ``start + step``, ``start + 2 * step``, ... (ns)."""

    def __init__(self, start: int = T0, step: int = 10**9) -> None:
        self.t = start
        self.step = step

    def __call__(self) -> int:
        self.t += self.step
        return self.t
