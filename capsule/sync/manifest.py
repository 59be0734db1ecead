"""The remote object layout (spec 19): manifests and segments. Sans-IO.

Theory of operation: object stores cannot append, so a remote capsule is a set of
immutable objects under one prefix. *Segments* hold the capsule's bytes, cut at
commit ends; a *manifest* lists, in order, the segments that make the file up to
one commit, with the SHA-256 of each, and names that commit (seq, chain value,
Merkle root). Manifests are numbered by *generation* and each is created with a
create-only write, so of two pushers that read generation g, exactly one creates
g + 1. A reader takes the newest manifest that parses and checks; nothing else
under the prefix is read. Everything here works on values and bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ._errors import RemoteCorrupt

FORMAT = "capsule-remote/1"
MANIFEST_DIR = "manifests"
SEGMENT_DIR = "segments"
#: 19.2: bounds a reader checks before it parses or allocates (a writable bucket is hostile input)
MAX_MANIFEST_BYTES = 4 << 20
MAX_SEGMENTS = 65_536
#: 19.2: generations are 1 .. 2**63 - 1; a name with a larger number is not a manifest's
MAX_GENERATION = (1 << 63) - 1
#: 19.5: a push merges the newest segments while MERGE_RUN of them lie in the new one's size tier
MERGE_RUN = 3

_MANIFEST_RE = re.compile(r"([0-9]{20})\.json")  # fullmatch: `$` would let a trailing newline by
_SEGMENT_RE = re.compile(r"segments/([0-9]{20})-([0-9a-f]{64})\.seg")  # fullmatch, ASCII digits (19.1)
_HEX64 = re.compile(r"[0-9a-f]{64}")  # fullmatch
_HEX32 = re.compile(r"[0-9a-f]{32}")


def manifest_name(generation: int) -> str:
    """19.2: ``manifests/<generation, 20 decimal digits>.json``."""
    return f"{MANIFEST_DIR}/{generation:020d}.json"


def parse_manifest_name(name: str) -> int | None:
    """The generation a manifest object's base name carries, or None for any other name."""
    m = _MANIFEST_RE.fullmatch(name)
    return int(m.group(1)) if m and 1 <= int(m.group(1)) <= MAX_GENERATION else None


def segment_name(offset: int, chain: bytes) -> str:
    """19.3: ``segments/<start offset, 20 digits>-<chain value at its end, hex>.seg``."""
    return f"{SEGMENT_DIR}/{offset:020d}-{chain.hex()}.seg"


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment object: bytes [offset, offset + size) of the capsule."""

    name: str
    offset: int
    size: int
    sha256: str

    @property
    def end(self) -> int:
        return self.offset + self.size

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "offset": self.offset, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True, slots=True)
class Manifest:
    """One generation of a remote capsule (19.2)."""

    generation: int
    prev: dict[str, Any] | None  # {generation, sha256} of the manifest this push extended
    file_id: str
    size: int  # end of the last commit
    commits: int  # its ordinal
    seq: int  # its COMMIT frame's seq
    commit_offset: int
    chain: str  # its chain value (hex)
    root: str  # the Merkle root it names (hex)
    segments: tuple[Segment, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "generation": self.generation, "prev": self.prev, "file_id": self.file_id,
                "size": self.size, "commits": self.commits, "seq": self.seq,
                "commit_offset": self.commit_offset, "chain": self.chain, "root": self.root,
                "segments": [s.to_dict() for s in self.segments]}

    def encode(self) -> bytes:
        """The object's bytes: JSON, keys sorted, no spaces, one trailing newline (19.2)."""
        return (json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n").encode()

    def summary(self) -> dict[str, Any]:
        return {"commits": self.commits, "seq": self.seq, "root": self.root}

    def covering(self, offset: int) -> Segment:
        """The segment holding byte ``offset`` (0 <= offset < size)."""
        lo, hi = 0, len(self.segments) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.segments[mid].offset <= offset:
                lo = mid
            else:
                hi = mid - 1
        return self.segments[lo]


def _int(d: dict[str, Any], key: str, name: str, lo: int = 0) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v >= 1 << 63:
        raise RemoteCorrupt(f"{name}: `{key}` is not an integer >= {lo}", check="remote-manifest")
    return v


def _hex(d: dict[str, Any], key: str, name: str, pattern: re.Pattern[str] = _HEX64) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not pattern.fullmatch(v):
        raise RemoteCorrupt(f"{name}: `{key}` is not lowercase hex of the right length", check="remote-manifest")
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """19.2: one value per key; two readers must not see two manifests in one object."""
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("a key appears twice")
    return d


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")  # NaN, Infinity: Python's json takes them, JSON does not


def parse_manifest(data: bytes, name: str) -> Manifest:
    """Check and parse a manifest object named ``name`` (19.2); RemoteCorrupt names it."""
    gen = parse_manifest_name(name.rsplit("/", 1)[-1])
    if gen is None:
        raise RemoteCorrupt(f"{name}: not a manifest name", check="remote-manifest")
    if len(data) > MAX_MANIFEST_BYTES:
        raise RemoteCorrupt(f"{name}: {len(data)} bytes, over the {MAX_MANIFEST_BYTES} a manifest may have",
                            check="remote-manifest")
    try:
        d = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RemoteCorrupt(f"{name}: not a complete JSON manifest", check="remote-manifest") from None
    keys = {"format", "generation", "prev", "file_id", "size", "commits", "seq", "commit_offset", "chain", "root",
            "segments"}
    if not isinstance(d, dict) or set(d) != keys or d["format"] != FORMAT:
        raise RemoteCorrupt(f"{name}: not a {FORMAT} manifest", check="remote-manifest")
    if _int(d, "generation", name, 1) != gen:
        raise RemoteCorrupt(f"{name}: says generation {d['generation']}", check="remote-manifest")
    prev = d["prev"]
    if prev is not None:
        if not isinstance(prev, dict) or set(prev) != {"generation", "sha256"}:
            raise RemoteCorrupt(f"{name}: `prev` is not {{generation, sha256}}", check="remote-manifest")
        if _int(prev, "generation", name, 1) >= gen:
            raise RemoteCorrupt(f"{name}: `prev` names a later generation", check="remote-manifest")
        _hex(prev, "sha256", name)
    size = _int(d, "size", name, 1)
    segs_raw = d["segments"]
    if not isinstance(segs_raw, list) or not 1 <= len(segs_raw) <= MAX_SEGMENTS:
        raise RemoteCorrupt(f"{name}: `segments` is not a list of 1..{MAX_SEGMENTS}", check="remote-manifest")
    segs: list[Segment] = []
    at = 0
    for s in segs_raw:
        if not isinstance(s, dict) or set(s) != {"name", "offset", "size", "sha256"}:
            raise RemoteCorrupt(f"{name}: a segment entry is not {{name, offset, sha256, size}}",
                                check="remote-manifest")
        m = _SEGMENT_RE.fullmatch(s["name"]) if isinstance(s["name"], str) else None
        off, n = _int(s, "offset", name), _int(s, "size", name, 1)
        if m is None or int(m.group(1)) != off or off != at:
            raise RemoteCorrupt(f"{name}: segment {s['name']!r} is not named for, or does not start at, "
                                f"offset {at}", check="remote-manifest")
        segs.append(Segment(s["name"], off, n, _hex(s, "sha256", name)))
        at = off + n
    if at != size:
        raise RemoteCorrupt(f"{name}: the segments end at {at}, not at size {size}", check="remote-manifest")
    commit_offset = _int(d, "commit_offset", name, 64)
    if commit_offset >= size or segs[-1].name != segment_name(segs[-1].offset, bytes.fromhex(_hex(d, "chain", name))):
        raise RemoteCorrupt(f"{name}: the last segment does not end at the commit it names", check="remote-manifest")
    return Manifest(gen, prev, _hex(d, "file_id", name, _HEX32), size, _int(d, "commits", name, 1),
                    _int(d, "seq", name, 0), commit_offset, d["chain"], _hex(d, "root", name), tuple(segs))


def tier(size: int) -> int:
    """19.5: a segment's size tier, floor(log4(size))."""
    return int(math.log(max(size, 1), 4))


def plan_segments(old: tuple[Segment, ...], tail: tuple[int, int]) -> tuple[list[tuple[int, int]], int]:
    """Where the new manifest's segments lie: the old ones, then the tail [start, end), merged
    with the newest old segments while MERGE_RUN of them lie in its tier or a lower one
    (19.5). Returns the spans to keep or write, in order, and how many leading old
    segments are kept as they are."""
    keep = len(old)
    start, end = tail
    while keep >= MERGE_RUN and all(tier(s.size) <= tier(end - start) for s in old[keep - MERGE_RUN : keep]):
        keep -= MERGE_RUN
        start = old[keep].offset
    return [(s.offset, s.end) for s in old[:keep]] + [(start, end)], keep
