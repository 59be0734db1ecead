"""Independent reference implementations of spec formulas, for tests only."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

STATE_ROOT_TAG = b"capsule/v1/state\x00"


def state_root(ids: Iterable[bytes]) -> str:
    """Spec 13.1 written out directly: 4,096 buckets by the first 12 bits of each id."""
    idset = sorted(set(ids))
    buckets: list[list[bytes]] = [[] for _ in range(4096)]
    for i in idset:
        buckets[(i[0] << 4) | (i[1] >> 4)].append(i)
    h = hashlib.sha256(STATE_ROOT_TAG + len(idset).to_bytes(8, "little"))
    for b in buckets:
        h.update(hashlib.sha256(b"".join(b)).digest())
    return h.hexdigest()
