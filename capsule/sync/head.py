"""The remote's newest generation (spec 19.2) and probes of its bytes.

A reader lists ``manifests/``, and takes the newest manifest that reads whole and
passes 19.2's checks. Newer objects that fail are skipped and reported: every
object is written whole (19.4), so one that fails is damage, and what it claims
is never used (nothing it names is trusted: pull checks every byte it takes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ._errors import RemoteCorrupt
from .manifest import (
    MANIFEST_DIR,
    MAX_MANIFEST_BYTES,
    Manifest,
    manifest_name,
    parse_manifest,
    parse_manifest_name,
)
from .remote import Remote

#: how many failing manifests a reader steps over before it gives up (a hostile bucket)
MAX_SKIPPED = 64


@dataclass
class RemoteHead:
    manifest: Manifest | None
    digest: str | None  # SHA-256 (hex) of the manifest object's bytes
    top: int  # the highest generation under manifests/, whole or not: a push creates top + 1
    skipped: list[str] = field(default_factory=list)  # newer manifests that failed their checks

    def prev(self) -> dict[str, object] | None:
        m = self.manifest
        return None if m is None else {"generation": m.generation, "sha256": self.digest}


def read_head(remote: Remote) -> RemoteHead:
    gens = sorted({g for n in remote.listdir(MANIFEST_DIR) if (g := parse_manifest_name(n)) is not None})
    skipped: list[str] = []
    for g in reversed(gens):
        name = manifest_name(g)
        try:
            data = remote.read(name, limit=MAX_MANIFEST_BYTES)
            m = parse_manifest(data, name)
        except RemoteCorrupt as e:
            skipped.append(str(e))
            if len(skipped) >= MAX_SKIPPED:
                raise RemoteCorrupt(f"{remote.shown}: the newest {MAX_SKIPPED} manifests all fail their checks",
                                    check="remote-manifest") from None
            continue
        return RemoteHead(m, hashlib.sha256(data).hexdigest(), gens[-1], skipped)
    return RemoteHead(None, None, gens[-1] if gens else 0, skipped)


def remote_has(remote: Remote, m: Manifest, end: int, chain: bytes) -> bool:
    """Whether the remote holds ``chain`` as the 32 bytes before ``end`` (a commit end of the
    other copy): one ranged read. Segments end at commit ends, so those bytes lie in one."""
    if end > m.size or end < 96:
        return False
    seg = m.covering(end - 1)
    if end - 32 < seg.offset:
        return False
    return remote.read_range(seg.name, end - 32 - seg.offset, end - seg.offset) == chain
