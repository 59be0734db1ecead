"""COMMIT, INDEX and RECOVERY payloads (spec sections 6, 8 and 9). Sans-IO."""

from __future__ import annotations

import hashlib
import io
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgpack

from ..core import constants as C
from ..core.errors import CorruptError, NonCanonicalError
from . import canonical as canon
from .blob import BlobRef, parse_blob_refs
from .index import ENTRY_SIZE, SegmentRef

_LOC = struct.Struct("<8sQ")


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What a COMMIT frame says (6.1)."""

    offset: int  # where the COMMIT frame starts
    end: int  # where it ends: the committed length of the file
    seq: int  # the COMMIT frame's seq; equals tree_size (6.1)
    time: int
    root: bytes  # Merkle root over frames [0, seq)
    records: int  # records committed in total, this commit included
    commits: int  # ordinal of this commit: 1 for the first
    prev: int | None  # offset of the previous COMMIT frame
    index: int | None  # offset of the INDEX frame in force
    index_hash: bytes | None  # SHA-256 of that INDEX frame's payload
    chain: bytes = b""  # the COMMIT frame's chain value
    keyslots: int | None = None  # 10.3: offset of the newest KEYSLOT frame (encrypted files only)
    mac: bytes | None = None  # 10.7: the key holder's MAC over the history before it (encrypted files only)

    def to_value(self, *, mac: bool = True) -> dict[str, object]:
        v: dict[str, object] = {
            "commits": self.commits,
            "index": None if self.index is None else [self.index, self.index_hash],
            "prev": self.prev,
            "records": self.records,
            "root": self.root,
            "time": self.time,
            "tree_size": self.seq,
        }
        if self.keyslots is not None:
            v["keyslots"] = self.keyslots
        if mac and self.mac is not None:
            v["mac"] = self.mac
        return dict(sorted(v.items()))  # 5.1: keys in UTF-8 order


def encode_commit_payload(info: CommitInfo) -> bytes:
    """6.1-6.2: canonical map, then the 16-byte tail locator as the last payload bytes."""
    return canon.pack(info.to_value()) + _LOC.pack(C.TAIL_MAGIC, info.offset)


_COMMIT_KEYS = {"commits", "index", "prev", "records", "root", "time", "tree_size"}


def _fail(msg: str, offset: int, seq: int | None) -> CorruptError:
    return CorruptError(msg, offset=offset, seq=seq, check="commit")


def parse_commit_payload(payload: bytes, offset: int, seq: int, end: int, chain: bytes) -> CommitInfo:
    if len(payload) < C.TAIL_LOCATOR_SIZE + 1:
        raise _fail("commit payload too short", offset, seq)
    magic, loc = _LOC.unpack(payload[-C.TAIL_LOCATOR_SIZE :])
    if magic != C.TAIL_MAGIC or loc != offset:
        raise _fail("tail locator does not point at its own frame", offset, seq)
    try:
        v = canon.decode(payload[: -C.TAIL_LOCATOR_SIZE])
    except NonCanonicalError as e:
        raise _fail(str(e), offset, seq) from e
    try:
        if not isinstance(v, dict) or set(v) - {"keyslots", "mac"} != _COMMIT_KEYS or ("mac" in v) != ("keyslots" in v):
            raise ValueError("fields")
        ks, mac = v.get("keyslots"), v.get("mac")
        if "keyslots" in v and not (type(ks) is int and C.HEADER_SIZE <= ks < offset):
            raise ValueError("keyslots")
        if "mac" in v and not (isinstance(mac, bytes) and len(mac) == 32):
            raise ValueError("mac")
        idx = v["index"]
        if idx is not None and not (
            isinstance(idx, list) and len(idx) == 2 and type(idx[0]) is int and isinstance(idx[1], bytes)
            and len(idx[1]) == 32 and C.HEADER_SIZE <= idx[0] < offset
        ):
            raise ValueError("index")
        prev = v["prev"]
        if prev is not None and not (type(prev) is int and C.HEADER_SIZE <= prev < offset):
            raise ValueError("prev")
        if v["tree_size"] != seq:
            raise ValueError("tree_size")
        if not isinstance(v["root"], bytes) or len(v["root"]) != 32:
            raise ValueError("root")
        if type(v["commits"]) is not int or v["commits"] < 1:
            raise ValueError("commits")
        for k in ("records", "time"):
            if type(v[k]) is not int or v[k] < 0:
                raise ValueError(k)
    except (ValueError, KeyError) as e:
        raise _fail(f"commit field {e} is invalid", offset, seq) from e
    return CommitInfo(
        offset=offset, end=end, seq=seq, time=v["time"], root=v["root"], records=v["records"], commits=v["commits"], prev=prev,
        index=None if idx is None else idx[0], index_hash=None if idx is None else idx[1], chain=chain,
        keyslots=ks, mac=mac,
    )


@dataclass(frozen=True, slots=True)
class IndexMeta:
    """What an INDEX frame says (9.2): a checkpoint of the reader's state."""

    tree_size: int  # == the INDEX frame's own seq; frontier covers frames before it
    frontier: list[bytes]
    records: int
    kinds: dict[str, int]
    segments: list[SegmentRef] = field(default_factory=list)
    checkpoint: tuple[int, bytes] | None = None  # latest CHECKPOINT frame: (offset, body hash)
    keyset: int | None = None  # latest KEYSET frame offset
    labels: list[SegmentRef] = field(default_factory=list)  # checkpoint label tables (9.2, 14.9)
    blobs: dict[str, BlobRef] = field(default_factory=dict)  # newest blob of each type (9.2, 1.1)
    #: 9.2 (1.2) `vectors`: the vector parameters (16.1) of the records before this INDEX as a
    #: map, {} when they fix none; None when the INDEX does not say (a 1.0 or 1.1 writer's, or
    #: any INDEX of a file created before 1.2, 12.6).
    vectors: dict[str, int | str] | None = None

    def to_value(self) -> dict[str, object]:
        v: dict[str, object] = {
            "checkpoint": None if self.checkpoint is None else [self.checkpoint[0], self.checkpoint[1]],
            "frontier": list(self.frontier),
            "keyset": self.keyset,
            "kinds": dict(sorted(self.kinds.items())),
            "labels": [s.to_value() for s in self.labels],
            "records": self.records,
            "segments": [s.to_value() for s in self.segments],
            "tree_size": self.tree_size,
        }
        if self.blobs:  # 9.2: omitted when the file has no blob, so 1.0 INDEX bytes are unchanged
            v["blobs"] = [self.blobs[t].to_value() for t in sorted(self.blobs)]
        if self.vectors is not None:  # 9.2: omitted in files created before 1.2 (12.6)
            v["vectors"] = dict(sorted(self.vectors.items()))
        return dict(sorted(v.items()))  # 5.1: keys in canonical order

    def encode(self) -> bytes:
        return canon.pack(self.to_value())


def parse_index_payload(payload: bytes, offset: int, seq: int) -> IndexMeta:
    def bad(msg: str) -> CorruptError:
        return CorruptError(msg, offset=offset, seq=seq, check="index")

    if len(payload) > C.MAX_INDEX_META:
        raise bad("index payload over its limit")
    try:
        v = canon.decode(payload)
    except NonCanonicalError as e:
        raise bad(str(e)) from e
    if not isinstance(v, dict) or set(v) - {"blobs", "vectors"} != {
            "checkpoint", "frontier", "keyset", "kinds", "labels", "records", "segments", "tree_size"}:
        raise bad("index fields are wrong")
    blobs = parse_blob_refs(v["blobs"], offset) if "blobs" in v else {}
    vec = v.get("vectors")
    if "vectors" in v and not (isinstance(vec, dict) and len(vec) <= 8 and all(
            type(x) is int or type(x) is str for x in vec.values())):
        raise bad("index vectors is malformed")  # 9.2: a map of 7.10 fields; the search layer checks them
    ck = v["checkpoint"]
    if ck is not None and not (isinstance(ck, list) and len(ck) == 2 and type(ck[0]) is int
                               and C.HEADER_SIZE <= ck[0] < offset and isinstance(ck[1], bytes) and len(ck[1]) == 32):
        raise bad("index checkpoint pointer is malformed")
    ks = v["keyset"]
    if ks is not None and not (type(ks) is int and C.HEADER_SIZE <= ks < offset):
        raise bad("index keyset pointer is malformed")
    if v["tree_size"] != seq:
        raise bad("index tree_size is not its own seq")
    fr = v["frontier"]
    if (not isinstance(fr, list) or any(not isinstance(h, bytes) or len(h) != 32 for h in fr)
            or len(fr) != bin(seq).count("1")):
        raise bad("index frontier is malformed")
    kinds = v["kinds"]
    if not isinstance(kinds, dict) or any(type(n) is not int or n < 0 for n in kinds.values()):
        raise bad("index kind counts are malformed")
    segs = _segment_refs(v["segments"], offset, bad)
    labels = _segment_refs(v["labels"], offset, bad)
    total = sum(r.count for r in segs)
    if type(v["records"]) is not int or v["records"] != total or sum(kinds.values()) != total:
        raise bad("index record counts disagree")
    return IndexMeta(seq, list(fr), v["records"], dict(kinds), segs,
                     None if ck is None else (ck[0], ck[1]), ks, labels, blobs, vec)


def _segment_refs(segv: object, offset: int, bad: Callable[[str], CorruptError]) -> list[SegmentRef]:
    if not isinstance(segv, list) or len(segv) > C.MAX_SEGMENTS:
        raise bad("index segment list is malformed")
    out = []
    for s in segv:
        if (not isinstance(s, list) or len(s) != 3 or type(s[0]) is not int or type(s[1]) is not int
                or not isinstance(s[2], bytes) or len(s[2]) != 32 or not C.HEADER_SIZE <= s[0] < offset
                or not 0 < s[1] <= (offset - s[0]) // ENTRY_SIZE):
            raise bad("index segment entry is malformed")
        out.append(SegmentRef(s[0], s[1], s[2]))
    return out


def parse_recovery(payload: bytes, offset: int, seq: int) -> dict[str, object]:
    """8.3: the RECOVERY map, strictly."""
    try:
        v = canon.decode(payload)
    except NonCanonicalError as e:
        raise CorruptError(str(e), offset=offset, seq=seq, check="recovery") from None
    if (not isinstance(v, dict) or set(v) != {"length", "offset", "sha256"} or type(v["length"]) is not int
            or type(v["offset"]) is not int or v["length"] < 1 or not C.HEADER_SIZE <= v["offset"] <= offset
            or not isinstance(v["sha256"], bytes) or len(v["sha256"]) != 32):
        raise CorruptError("RECOVERY map is malformed", offset=offset, seq=seq, check="recovery")
    return v


def encode_recovery(offset: int, dropped: bytes) -> bytes:
    """8.3: a writer that truncated a torn tail says what it dropped."""
    return canon.pack({"length": len(dropped), "offset": offset, "sha256": hashlib.sha256(dropped).digest()})


# --- RECORDS payload (7.0) ---------------------------------------------------------


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_records_payload(items: list[bytes]) -> bytes:
    """7.0: a RECORDS payload is one canonical array of record maps."""
    return array_header(len(items)) + b"".join(items)


def check_objects(raw: bytes, bounds: Sequence[int], offset: int, seq: int) -> None:
    """11: refuse a RECORDS payload with a record over MAX_RECORD_OBJECTS or more
    than MAX_FRAME_OBJECTS in all, counting headers before anything is built.

    A record of N bytes holds at most N objects, so only records longer than the
    record cap are walked, and the others only when their lengths could add up
    past the payload cap; each walk stops at what is left of the budget.
    """
    def over(msg: str) -> CorruptError:
        return CorruptError(f"{msg} (spec 11)", offset=offset, seq=seq, check="canonical")

    n = len(bounds) - 1
    counted = 1 + n  # the array, and at least one object per record
    unwalked = 0  # objects the unwalked records may hold beyond their first
    small = []
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        if b - a <= C.MAX_RECORD_OBJECTS:
            small.append(a)
            unwalked += b - a - 1
            continue
        k = canon.count_objects(raw, C.MAX_RECORD_OBJECTS, a)
        if k > C.MAX_RECORD_OBJECTS:
            raise over(f"record {i} holds more than {C.MAX_RECORD_OBJECTS} msgpack objects")
        counted += k - 1
        if counted > C.MAX_FRAME_OBJECTS:
            break
    else:
        if counted + unwalked <= C.MAX_FRAME_OBJECTS:
            return
        for a in small:
            counted += canon.count_objects(raw, C.MAX_FRAME_OBJECTS - counted + 1, a) - 1
            if counted > C.MAX_FRAME_OBJECTS:
                break
        else:
            return
    raise over(f"RECORDS payload holds more than {C.MAX_FRAME_OBJECTS} msgpack objects")


def may_hold_too_many(raw: bytes) -> bool:
    """11: whether the records of this payload could pass an object cap at all:
    they hold at most as many objects as bytes, and the payload cap is above the
    record cap, so a writer's batch of at most 2^20 bytes of records needs no count."""
    first = raw[0] if raw else 0
    head = 3 if first == 0xDC else 5 if first == 0xDD else 1
    return len(raw) - head > C.MAX_RECORD_OBJECTS


def decode_records_payload(raw: bytes, offset: int, seq: int) -> list[tuple[object, bytes]]:
    """Split a RECORDS payload into (value, canonical bytes) pairs, checking the profile."""
    if may_hold_too_many(raw):
        check_objects(raw, record_bounds(raw, offset, seq), offset, seq)
    try:
        values = canon.decode_bulk(raw)  # objects counted just above
    except NonCanonicalError as e:
        raise CorruptError(str(e), offset=offset, seq=seq, check="canonical") from e
    if not isinstance(values, list) or not values or len(values) > C.MAX_RECORDS_PER_FRAME:
        raise CorruptError("RECORDS payload must be a non-empty array", offset=offset, seq=seq, check="records")
    out = list(zip(values, canon.split_array(raw), strict=True))
    for v, data in out:
        # 11: the array itself is one level, so a record may reach MAX_DEPTH below it. A
        # record has no more levels than container headers, so most need no walk.
        if len(data.translate(None, _NOT_CONTAINER)) > C.MAX_DEPTH and canon.depth(v) > C.MAX_DEPTH:
            raise CorruptError(f"record nested deeper than {C.MAX_DEPTH} (spec 11)", offset=offset, seq=seq,
                               check="canonical")
    return out


#: every byte but the msgpack map and array headers (fixmap, fixarray, array16/32, map16/32)
_NOT_CONTAINER = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def record_bounds(raw: bytes, offset: int, seq: int) -> Sequence[int]:
    """Start offsets of each record in a RECORDS payload, plus its end (7.0); an int64
    array, so a payload of a million empty records builds no million int objects (11)."""
    # Read through a file object, not feed(): the buffer then holds about one
    # record at a time instead of a second copy of a payload of up to 256 MiB.
    size = len(raw) or 1
    up = msgpack.Unpacker(io.BytesIO(raw), read_size=min(size, 1 << 20), raw=False, max_buffer_size=size,
                          max_str_len=C.MAX_STR, max_bin_len=C.MAX_BIN, max_array_len=C.MAX_ARRAY,
                          max_map_len=C.MAX_MAP, max_ext_len=0)
    try:
        n = up.read_array_header()
        if not 0 < n <= C.MAX_RECORDS_PER_FRAME:
            raise ValueError("record count")
        bounds = array("q", (up.tell(),))
        for _ in range(n):
            up.skip()
            bounds.append(up.tell())
    except (ValueError, msgpack.UnpackException) as e:
        # UnpackException covers OutOfData, StackError, FormatError and BufferFull (a payload
        # shorter than its own array header: found by fuzzing)
        raise CorruptError(f"malformed RECORDS payload: {e or type(e).__name__}", offset=offset, seq=seq,
                           check="records") from None
    if bounds[-1] != len(raw):
        raise CorruptError("trailing bytes in a RECORDS payload", offset=offset, seq=seq, check="records")
    return bounds


def record_kinds(raw: bytes, offset: int, seq: int) -> list[tuple[str, bytes]]:
    """(kind, stored bytes) of each record in a RECORDS payload, without the full
    canonical check: enough to index ids (5.3). Every read of a record's content
    (get, records, verify) checks it fully, so replay stays cheap."""
    bounds = record_bounds(raw, offset, seq)
    if may_hold_too_many(raw):  # 11: before unpackb builds them
        check_objects(raw, bounds, offset, seq)
    out = []
    for i in range(len(bounds) - 1):
        data = raw[bounds[i] : bounds[i + 1]]
        try:
            canon.check_promises(data)  # 11: msgpack sizes lists by their headers
            v = msgpack.unpackb(data, raw=False, strict_map_key=False, max_str_len=C.MAX_STR,
                                max_bin_len=C.MAX_BIN, max_array_len=canon.max_array(data), max_map_len=C.MAX_MAP,
                                max_ext_len=0)
        except (ValueError, TypeError, msgpack.StackError, msgpack.FormatError) as e:
            raise CorruptError(f"malformed record: {e}", offset=offset, seq=seq, check="records") from None
        kind = v.get("kind") if isinstance(v, dict) else None
        if not isinstance(kind, str):
            raise CorruptError("record without a kind", offset=offset, seq=seq, check="record")
        out.append((kind, data))
    return out
